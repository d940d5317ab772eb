//! The daemon: one per repository, the single writer of the journal.
//!
//! It accepts client requests on `daemon.sock`, starts agents (worktree,
//! then monitor), keeps one connection to every monitor, turns what
//! monitors report into events, and answers from the agent table, which is
//! the fold of the journal. It owns no agent process: monitors do, so the
//! daemon can die and come back. On start it re-adopts every agent the
//! journal says is running: a live monitor is reconnected (same pid,
//! output caught up from the log), a finished one is read from its exit
//! record, and a vanished one is marked Lost.
//!
//! Every change is journaled (and fsynced) before the client hears of it.
//!
//! Here: requests, spawn, watching monitors, slots, adoption, stop, wait,
//! gc and the event stream. In `budgets`: budget checks and prices; in
//! `merges`: the merge queue and its recovery; in `assign`: next tasks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::daemon::journal::{Draft, Journal, JournalReader};
use crate::git::worktree;
use crate::model::address::Address;
use crate::model::budget::{Budget, BudgetKind, Spend};
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::{Event, EventBody};
use crate::model::lifecycle::{classify_exit, AgentRecord, AgentState, AgentTable, MergeSpec, MergeState};
use crate::monitor::{self, ExitRecord, MonitorCommand, MonitorMessage, MonitorSpec};
use crate::sys::output::{clean_line, Limiter, LineCursor};
use crate::sys::paths::{AgentDir, StateDir};
use crate::wire::protocol::{framed, GcEntry, Request, Response, SpawnRequest, Spawned, PROTOCOL_VERSION};
use corral_harness::launch::{delivery, message_input, resume_argv, Delivery, Launch};
use corral_probes::ProbeEvent;

mod assign;
mod budgets;
pub mod journal;
mod merges;

use assign::*;
use budgets::*;
use merges::*;

/// How long a new monitor may take to come up.
const MONITOR_START_TIMEOUT: Duration = Duration::from_secs(20);

/// The daemon's shared state. Lock rules:
/// - a `std::sync::Mutex` guard is held only for a few lines of plain
///   code, never across an `.await`;
/// - where two are held at once, they are taken in this order and no
///   other: `reserved` or `journal`, then `table`, then `activity`;
///   `monitors` is never held with another;
/// - `config` is no lock: `Inner::config` hands out a snapshot;
/// - the tokio mutexes `slots` and `git` are held across awaits: `slots`
///   may be taken before `git`, never after it; a merge gate holds neither.
struct Inner {
    state: StateDir,
    exe: PathBuf,
    journal: Mutex<Journal>,
    table: Mutex<AgentTable>,
    /// Addresses with a spawn in flight, and the next agent id.
    reserved: Mutex<(HashSet<Address>, u64)>,
    /// The newest journal seq; changes wake followers and waiters.
    seq: watch::Sender<u64>,
    /// Command channels to the monitors the daemon is connected to.
    monitors: Mutex<HashMap<Address, mpsc::UnboundedSender<AgentCommand>>>,
    /// Serializes git changes (worktree add and remove).
    git: tokio::sync::Mutex<()>,
    /// This daemon's build (see `protocol::build_id`).
    build: String,
    /// When each running agent last printed anything (for idle budgets).
    activity: Mutex<HashMap<Address, Instant>>,
    /// corral.toml as last read (at start and at each spawn): the daily
    /// budget and the price table. Read only through `Inner::config`, which
    /// hands out a snapshot and holds nothing: so no code can hold the
    /// config while it takes the table, or the other way round.
    config: watch::Sender<Arc<crate::config::Config>>,
    /// The merge queue's input.
    merges: mpsc::UnboundedSender<MergeJob>,
    /// Held while deciding whether an agent may start (max_threads).
    slots: tokio::sync::Mutex<()>,
}

/// Runs the daemon in the foreground until `Shutdown` or a signal.
pub fn run(state: StateDir) -> anyhow::Result<()> {
    state.create()?;
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state.lock())?;
    // Locked once, and the guard kept for the life of the process: a
    // second lock taken after dropping a first guard would leave a window
    // in which another daemon could win the lock too.
    let _lock = match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(guard) => guard,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(state.pid_file()).unwrap_or_default();
            eprintln!("corral: a daemon already runs for this repository (pid {})", pid.trim());
            return Ok(());
        }
        Err((_, e)) => anyhow::bail!("cannot lock {}: {e}", state.lock().display()),
    };
    // This daemon's build, fixed now from the binary it started from.
    let _ = crate::wire::protocol::build_id();
    crate::cli::client::check_owner(&state)?;
    std::fs::write(state.pid_file(), std::process::id().to_string())?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(serve(state))
}

async fn serve(state: StateDir) -> anyhow::Result<()> {
    let daemon_started = std::time::SystemTime::now();
    let config = crate::config::Config::load(&state.repo_root).unwrap_or_else(|err| {
        eprintln!("corral: {err}; using no daily budget or prices until it is fixed");
        crate::config::Config::default()
    });
    let mut state = state;
    if let Some(root) = &config.supervisor.worktree_root {
        // `[supervisor] worktree_root` (read when the daemon starts) wins
        // over CORRAL_WORKTREE_ROOT and the XDG default.
        state.worktrees = crate::sys::paths::worktrees_for(root, &state.repo_root);
    }
    let (journal, events) = Journal::open(&state.journal())?;
    let mut table = AgentTable::default();
    for event in &events {
        table.apply(event);
    }
    let next_id = table.last_id + 1;
    let (seq, _) = watch::channel(journal.last_seq());
    let (merge_tx, merge_rx) = mpsc::unbounded_channel();
    let inner = Arc::new(Inner {
        exe: std::env::current_exe()?,
        state: state.clone(),
        journal: Mutex::new(journal),
        table: Mutex::new(table),
        reserved: Mutex::new((HashSet::new(), next_id)),
        seq,
        monitors: Mutex::new(HashMap::new()),
        git: tokio::sync::Mutex::new(()),
        build: crate::wire::protocol::build_id(),
        activity: Mutex::new(HashMap::new()),
        config: watch::Sender::new(Arc::new(config)),
        merges: merge_tx,
        slots: tokio::sync::Mutex::new(()),
    });
    inner
        .commit(vec![Draft {
            agent: None,
            parent: None,
            task: None,
            body: EventBody::DaemonStarted { pid: std::process::id() },
        }])
        .await?;
    adopt_all(&inner).await;
    start_budget_clock(&inner);
    start_merge_queue(&inner, merge_rx);
    resume_merges(&inner, daemon_started).await;
    dispatch_pending(&inner).await;

    let socket = state.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    eprintln!("corral: daemon {} serving {}", std::process::id(), socket.display());

    let (stop_tx, mut stop_rx) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (inner, stop_tx) = (inner.clone(), stop_tx.clone());
                tokio::spawn(async move {
                    if let Err(err) = serve_client(inner, stream, stop_tx).await {
                        eprintln!("corral: client connection: {err}");
                    }
                });
            }
            _ = stop_rx.changed() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    eprintln!("corral: daemon {} stopped; agents keep running", std::process::id());
    Ok(())
}

impl Inner {
    /// Journals the drafts (fsynced), then applies them to the table and
    /// wakes followers. The one way state changes.
    async fn commit(self: &Arc<Self>, drafts: Vec<Draft>) -> Result<Vec<Event>> {
        let inner = self.clone();
        tokio::task::spawn_blocking(move || inner.commit_blocking(drafts))
            .await
            .map_err(|e| Error::other(format!("journal writer failed: {e}")))?
    }

    /// `commit` where nobody waits for the answer (a monitor's report, a
    /// merge step): a journal that cannot be written is logged, never
    /// ignored; the table did not move, since it follows the journal.
    async fn commit_logged(self: &Arc<Self>, drafts: Vec<Draft>) {
        let about: Vec<String> = drafts
            .iter()
            .map(|d| format!("{} {}", d.agent.as_ref().map_or("-".into(), |a| a.to_string()), d.body.type_name()))
            .collect();
        if let Err(err) = self.commit(drafts).await {
            eprintln!("corral: not journaled ({}): {err}", about.join(", "));
        }
    }

    fn commit_blocking(&self, drafts: Vec<Draft>) -> Result<Vec<Event>> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let mut journal = self.journal.lock().unwrap();
        let events = journal.append(drafts)?;
        let mut table = self.table.lock().unwrap();
        for event in &events {
            table.apply(event);
        }
        drop(table);
        self.seq.send_replace(journal.last_seq());
        Ok(events)
    }

    /// corral.toml as last read: a snapshot, no lock held.
    fn config(&self) -> Arc<crate::config::Config> {
        self.config.borrow().clone()
    }

    fn record(&self, address: &Address) -> Option<AgentRecord> {
        self.table.lock().unwrap().agents.get(address).cloned()
    }

    fn draft(&self, record: &AgentRecord, body: EventBody) -> Draft {
        Draft {
            agent: Some(record.address.clone()),
            parent: Some(record.parent.clone()),
            task: Some(record.task_id.clone()),
            body,
        }
    }

    fn find(&self, text: &str) -> Result<AgentRecord> {
        let address = Address::parse(text)?;
        self.record(&address).ok_or_else(|| {
            Error::new(ErrorKind::UnknownAddress, format!("no agent at {address} (see `corral ps --all`)"))
        })
    }
}

async fn serve_client(inner: Arc<Inner>, stream: UnixStream, stop: watch::Sender<bool>) -> std::io::Result<()> {
    let (mut reader, mut writer) = stream.into_split();
    match framed::read::<Request>(&mut reader).await? {
        Some(Request::Hello { version }) if version == PROTOCOL_VERSION => {
            let hello =
                Response::Hello { version: PROTOCOL_VERSION, pid: std::process::id(), build: inner.build.clone() };
            framed::write(&mut writer, &hello).await?;
        }
        Some(Request::Hello { version }) => {
            let message = format!(
                "this daemon speaks protocol {PROTOCOL_VERSION}, the client {version}: run `corral shutdown` with the old binary and retry"
            );
            return framed::write(&mut writer, &Response::Error(Error::other(message))).await;
        }
        _ => return Ok(()),
    }
    loop {
        let request = match framed::read::<Request>(&mut reader).await {
            Ok(Some(request)) => request,
            Ok(None) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                let error = Error::other(format!("the daemon cannot read this request: {err}"));
                framed::write(&mut writer, &Response::Error(error)).await?;
                continue;
            }
            Err(err) => return Err(err),
        };
        match request {
            Request::Events { since, follow, agent } => {
                return stream_events(&inner, &mut reader, &mut writer, since, follow, agent).await;
            }
            Request::Shutdown => {
                framed::write(&mut writer, &Response::Ok).await?;
                let _ = stop.send(true);
                return Ok(());
            }
            request => {
                let response = handle(&inner, request).await.unwrap_or_else(Response::Error);
                framed::write(&mut writer, &response).await?;
            }
        }
    }
}

async fn handle(inner: &Arc<Inner>, request: Request) -> Result<Response> {
    match request {
        Request::Spawn(spawn) => spawn_agent(inner, *spawn).await.map(Response::Spawned),
        Request::List { all } => {
            let table = inner.table.lock().unwrap();
            let agents = table.agents.values().filter(|a| all || !a.removed).cloned().collect();
            Ok(Response::Agents { agents })
        }
        Request::Info { address } => {
            let agent = inner.find(&address)?;
            let dir = inner.state.agent(agent.id);
            Ok(Response::Info { log: dir.log(), monitor_socket: dir.socket(), agent: Box::new(agent) })
        }
        Request::Stop { address, grace_secs } => stop(inner, &address, grace_secs).await,
        Request::Wait { addresses, timeout_secs } => wait(inner, &addresses, timeout_secs).await,
        Request::Gc { force } => gc(inner, force).await,
        Request::Merge { address, strategy } => {
            let agent = inner.find(&address)?;
            if !agent.state.is_terminal() {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("{} is {}; its work merges once it has ended", agent.address, agent.state.as_str()),
                ));
            }
            let (reply, answer) = oneshot::channel();
            enqueue_merge(inner, &agent.address, strategy, Some(reply)).await;
            let agent = answer.await.ok().flatten().ok_or_else(|| Error::other("the merge queue stopped"))?;
            Ok(Response::Agent { agent: Box::new(agent) })
        }
        Request::Assign { address, task, queue } => assign(inner, &address, task, queue).await,
        Request::Diff { address } => {
            let agent = inner.find(&address)?;
            let (repo, branch, base) = (inner.state.repo_root.clone(), agent.branch.clone(), agent.base.clone());
            let patch = blocking(move || crate::git::merge::diff(&repo, &branch, &base).map_err(Error::from)).await?;
            Ok(Response::Diff { patch })
        }
        Request::Send { to, from, text } => {
            let agent = inner.find(&to)?;
            let sender = inner.monitors.lock().unwrap().get(&agent.address).cloned();
            let Some(sender) = sender else {
                return Err(Error::new(
                    ErrorKind::Refused,
                    format!("{} is {}; only a running agent takes messages", agent.address, agent.state.as_str()),
                ));
            };
            let (reply, answer) = oneshot::channel();
            sender
                .send(AgentCommand::Send { from, text, reply })
                .map_err(|_| Error::new(ErrorKind::Refused, format!("{} has ended", agent.address)))?;
            let message_id =
                answer.await.map_err(|_| Error::new(ErrorKind::Refused, format!("{} has ended", agent.address)))??;
            Ok(Response::Sent { message_id })
        }
        Request::Hello { .. } | Request::Events { .. } | Request::Shutdown => Err(Error::other("unexpected request")),
    }
}

// ---- spawn -----------------------------------------------------------------

/// A new agent's budget: what it asked for, within what each ancestor
/// with a budget has left (a child never gets more than its parent).
fn grant_budget(inner: &Arc<Inner>, parent: &Address, wanted: &Budget) -> std::result::Result<Budget, String> {
    let table = inner.table.lock().unwrap();
    let mut granted = *wanted;
    let mut scope = Some(parent.clone());
    while let Some(ancestor) = scope.filter(|a| !a.is_root()) {
        if let Some(record) = table.agents.get(&ancestor) {
            if !record.budget.is_empty() {
                let left = record.budget.left_after(&subtree_spend(&table, &ancestor));
                granted = Budget::grant(&granted, &left).map_err(|why| format!("{why} (the budget of {ancestor})"))?;
            }
        }
        scope = ancestor.parent();
    }
    Ok(granted)
}

async fn spawn_agent(inner: &Arc<Inner>, request: SpawnRequest) -> Result<Spawned> {
    let parent = match &request.parent {
        Some(text) => Address::parse(text)?,
        None => Address::root(),
    };
    if !parent.is_root() && inner.record(&parent).is_none() {
        return Err(Error::new(ErrorKind::UnknownAddress, format!("no agent at {parent} to be the parent")));
    }
    let address = parent.child(&request.name)?;
    if let Some(grace) = request.grace_secs {
        crate::model::duration::from_secs(grace)
            .map_err(|e| Error::new(ErrorKind::BadBudget, format!("--grace: {e}")))?;
    }
    let mut resolved = resolve_settings(inner, &address, &request)?;
    refuse_if_day_spent(inner)?;
    let max_depth = inner.config().supervisor.max_depth;
    if let Some(max) = max_depth.filter(|max| address.depth() > *max as usize) {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{address} would be {} levels below /root; max_depth is {max}", address.depth()),
        ));
    }
    resolved.budget.validate().map_err(|why| Error::new(ErrorKind::BadBudget, why))?;
    resolved.probes.validate().map_err(|e| Error::new(ErrorKind::BadConfig, format!("invalid probe: {e}")))?;
    resolved.restart.validate().map_err(|why| Error::new(ErrorKind::BadConfig, why))?;
    inherit_sandbox(inner, &parent, &address, &mut resolved)?;
    if request.fork_session {
        fork_session(inner, &parent, &address, &mut resolved)?;
    }
    let launch = build_launch(&resolved)?;
    check_command(&launch.argv[0], &resolved.env)?;

    // Reserve the address and an id, so concurrent spawns cannot clash.
    let id = {
        let mut reserved = inner.reserved.lock().unwrap();
        // An agent `corral gc` removed frees its name: its history stays in
        // the journal under its id, and the new agent's record replaces it.
        let taken = inner.table.lock().unwrap().agents.get(&address).is_some_and(|a| !a.removed);
        if taken || reserved.0.contains(&address) {
            return Err(Error::new(ErrorKind::Duplicate, format!("an agent named {address} already exists")));
        }
        reserved.0.insert(address.clone());
        reserved.1 += 1;
        reserved.1 - 1
    };
    let granted = grant_budget(inner, &parent, &resolved.budget);
    let result = match granted {
        Ok(budget) => {
            resolved.budget = budget;
            spawn_reserved(inner, &request, &resolved, &launch, &parent, &address, id).await
        }
        Err(why) => Err(Error::new(ErrorKind::Refused, format!("spawn of {address} refused: {why}"))),
    };
    inner.reserved.lock().unwrap().0.remove(&address);
    result
}

/// The address is reserved; make the worktree and start the monitor.
async fn spawn_reserved(
    inner: &Arc<Inner>,
    request: &SpawnRequest,
    resolved: &Resolved,
    launch: &Launch,
    parent: &Address,
    address: &Address,
    id: u64,
) -> Result<Spawned> {
    let repo = inner.state.repo_root.clone();
    let branch = address.branch();
    let git_name = format!("corral-{}", address.flat());
    let worktree_path = inner.state.worktrees.join(address.flat());
    let task_id = format!("t-{id}");

    // Validate against git before anything is made.
    let base = {
        let (repo, base, branch) = (repo.clone(), request.base.clone(), branch.clone());
        blocking(move || {
            let commit = worktree::resolve_base(&repo, base.as_deref())?;
            worktree::ensure_branch_free(&repo, &branch)?;
            Ok(commit)
        })
        .await?
    };

    let spawned = Draft {
        agent: Some(address.clone()),
        parent: Some(parent.clone()),
        task: Some(task_id.clone()),
        body: EventBody::Spawned {
            id,
            harness: resolved.harness.clone(),
            task_text: resolved.task.clone(),
            command: launch.argv.clone(),
            branch: branch.clone(),
            worktree: worktree_path.clone(),
            base: base.clone(),
            budget: resolved.budget,
            grace_secs: resolved.grace_secs,
            probes: resolved.probes.clone(),
            restart: resolved.restart,
            model: resolved.model.clone(),
            merge: resolved.merge.clone(),
            sandbox: resolved.sandbox,
        },
    };
    inner.commit(vec![spawned]).await.map_err(|mut err| {
        err.message = err.message.replace("nothing was changed", "nothing was started");
        err
    })?;
    let record = inner.record(address).expect("just spawned");

    let fail = |reason: String| {
        let inner = inner.clone();
        let record = record.clone();
        async move {
            inner.commit_logged(vec![inner.draft(&record, EventBody::SpawnFailed { reason })]).await;
        }
    };

    {
        let _git = inner.git.lock().await;
        let (repo, name, branch, path, base) =
            (repo.clone(), git_name.clone(), branch.clone(), worktree_path.clone(), base.clone());
        if let Err(err) = blocking(move || worktree::create(&repo, &name, &branch, &base, &path)).await {
            fail(err.message.clone()).await;
            return Err(err);
        }
    }

    let agent_dir = inner.state.agent(id);
    if let Err(err) = write_monitor_spec(inner, &agent_dir, resolved, launch, &record).await {
        let _git = inner.git.lock().await;
        let (repo, branch, path) = (repo.clone(), branch.clone(), worktree_path.clone());
        let _ = blocking(move || worktree::discard(&repo, &branch, &path)).await;
        fail(err.message.clone()).await;
        return Err(err);
    }
    // Over `max_threads`, the agent waits in Pending for a slot.
    let _slots = inner.slots.lock().await;
    if !slot_free(inner) {
        inner.commit(vec![inner.draft(&record, EventBody::Queued {})]).await?;
        return Ok(Spawned { address: address.to_string(), task_id, branch, worktree: worktree_path, pid: 0 });
    }
    let launched = start_monitor(inner, &agent_dir, &record).await;
    let launched = match launched {
        Ok(launched) => launched,
        Err(err) => {
            let _git = inner.git.lock().await;
            let (repo, branch, path) = (repo.clone(), branch.clone(), worktree_path.clone());
            let _ = blocking(move || worktree::discard(&repo, &branch, &path)).await;
            fail(err.message.clone()).await;
            return Err(err);
        }
    };
    let (pid, monitor_pid) = launched.pids();
    inner.commit(vec![inner.draft(&record, EventBody::Started { pid, monitor_pid })]).await?;
    let record = inner.record(address).expect("started");
    start_watcher(inner, record, launched.stream());
    Ok(Spawned { address: address.to_string(), task_id, branch, worktree: worktree_path, pid })
}

/// One spawn's settings: corral.toml resolved for the address and role
/// (defaults, then policies by address prefix, then the role), with the
/// command line's own settings on top.
struct Resolved {
    harness: String,
    model: Option<String>,
    task: String,
    /// For `generic`, the command; else extra arguments for the CLI.
    command: Vec<String>,
    env: BTreeMap<String, String>,
    budget: Budget,
    probes: corral_probes::ProbeSet,
    restart: crate::model::restart::RestartSpec,
    grace_secs: Option<f64>,
    merge: MergeSpec,
    sandbox: Option<crate::config::Sandbox>,
    reasoning_effort: Option<String>,
}

fn resolve_settings(inner: &Inner, address: &Address, request: &SpawnRequest) -> Result<Resolved> {
    let bad = |e: crate::config::ConfigError| Error::new(ErrorKind::BadConfig, e.to_string());
    let config = crate::config::Config::load(&inner.state.repo_root).map_err(bad)?;
    inner.config.send_replace(Arc::new(config.clone()));
    let mut settings = config.resolve(&address.to_string(), request.role.as_deref()).map_err(bad)?;
    settings.overlay(&request.settings);
    let harness = settings.harness.clone().unwrap_or_else(|| "generic".into());
    // A role's args come first; the command line's go after them. For a
    // plain command, the role's args are the command when none is given.
    let mut command = settings.args.clone().unwrap_or_default();
    if harness == "generic" && !request.command.is_empty() {
        command.clear();
    }
    command.extend(request.command.iter().cloned());
    let mut env = request.env.clone();
    env.extend(settings.env.clone().unwrap_or_default());
    let task = if request.task.is_empty() { settings.task.clone().unwrap_or_default() } else { request.task.clone() };
    Ok(Resolved {
        harness,
        model: settings.model.clone(),
        task,
        command,
        env,
        budget: settings.budget_limits(),
        probes: settings.probes(),
        restart: settings.restart_spec(),
        grace_secs: request.grace_secs.or(config.supervisor.grace.map(|g| g.as_secs_f64())),
        sandbox: settings.sandbox,
        reasoning_effort: settings.reasoning_effort.clone(),
        merge: {
            let merge = settings.merge.clone().unwrap_or_default();
            MergeSpec {
                policy: merge.policy.unwrap_or_default(),
                // The target: as given, else the configured one, else the
                // branch checked out now.
                target: merge
                    .target
                    .clone()
                    .or_else(|| config.supervisor.target_branch.clone())
                    .or_else(|| worktree::current_branch(&inner.state.repo_root)),
                strategy: merge.strategy.unwrap_or_default(),
                gate: merge.gate.as_ref().map(Into::into),
            }
        },
    })
}

/// `--fork-session`: the child starts from a copy of its parent's Claude
/// Code session (see `corral_harness::launch::fork_claude_session`).
fn fork_session(inner: &Inner, parent: &Address, address: &Address, resolved: &mut Resolved) -> Result<()> {
    let refuse = |why: &str| Error::new(ErrorKind::Refused, format!("--fork-session for {address}: {why}"));
    if resolved.harness != "claude" {
        return Err(refuse("only Claude Code sessions can be forked (use --harness claude)"));
    }
    let record = inner.record(parent).ok_or_else(|| refuse("its parent is not an agent"))?;
    let session = match (record.harness.as_str(), record.session_id) {
        ("claude", Some(session)) => session,
        _ => return Err(refuse(&format!("{parent} is not a Claude Code agent with a session yet"))),
    };
    let worktree = inner.state.worktrees.join(address.flat());
    let args =
        corral_harness::launch::fork_claude_session(&resolved.env, &session, &worktree).map_err(|why| refuse(&why))?;
    resolved.command.extend(args);
    Ok(())
}

/// A child gets its parent's sandbox unless it asks for one, and may never
/// ask for more than its parent has.
fn inherit_sandbox(inner: &Inner, parent: &Address, address: &Address, resolved: &mut Resolved) -> Result<()> {
    let Some(parent_sandbox) = inner.record(parent).and_then(|p| p.sandbox) else { return Ok(()) };
    match resolved.sandbox {
        None => resolved.sandbox = Some(parent_sandbox),
        Some(wanted) if wanted > parent_sandbox => {
            let name =
                |s: crate::config::Sandbox| serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from));
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "spawn of {address} refused: it asks for a {} sandbox but its parent {parent} is {}",
                    name(wanted).unwrap_or_default(),
                    name(parent_sandbox).unwrap_or_default()
                ),
            ));
        }
        Some(_) => {}
    }
    Ok(())
}

/// The harness's command line for these settings (the harness applies
/// the sandbox and the reasoning effort as its CLI can).
fn build_launch(resolved: &Resolved) -> Result<Launch> {
    let harness = resolved.harness.as_str();
    let program = match corral_harness::launch::program_variable(harness) {
        Some(variable) => resolved.env.get(variable).cloned().unwrap_or_else(|| harness.to_string()),
        None => String::new(),
    };
    let options = corral_harness::launch::Options {
        model: resolved.model.as_deref(),
        sandbox: resolved.sandbox,
        reasoning_effort: resolved.reasoning_effort.as_deref(),
    };
    corral_harness::launch::launch(harness, &program, &resolved.task, &options, &resolved.command)
        .map_err(|why| Error::new(ErrorKind::BadHarness, why))
}

/// Refuses a command that is not on the agent's PATH (or not a file).
fn check_command(program: &str, env: &BTreeMap<String, String>) -> Result<()> {
    let not_found = || Error::new(ErrorKind::CommandNotFound, format!("command not found: {program}"));
    if program.contains('/') {
        // Relative paths resolve in the worktree, which does not exist yet.
        if Path::new(program).is_absolute() && !Path::new(program).exists() {
            return Err(not_found());
        }
        return Ok(());
    }
    let path = env.get("PATH").cloned().unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        let candidate = dir.join(program);
        std::fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    if found {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// Writes the monitor's spec, starts the monitor in its own session, and
/// waits until it reports the agent running.
async fn write_monitor_spec(
    inner: &Arc<Inner>,
    agent_dir: &AgentDir,
    resolved: &Resolved,
    launch: &Launch,
    record: &AgentRecord,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut env = resolved.env.clone();
    env.retain(|k, _| !k.starts_with("CORRAL_") || k == "CORRAL_WORKTREE_ROOT" || k == "CORRAL_TEST_ID");
    env.insert("CORRAL_ADDRESS".into(), record.address.to_string());
    env.insert("CORRAL_PARENT".into(), record.parent.to_string());
    env.insert("CORRAL_TASK_ID".into(), record.task_id.clone());
    env.insert("CORRAL_TASK".into(), record.task.clone());
    env.insert("CORRAL_SOCKET".into(), inner.state.socket().display().to_string());
    env.insert("CORRAL_BRANCH".into(), record.branch.clone());
    env.entry("TERM".into()).or_insert_with(|| "xterm-256color".into());
    let spec = MonitorSpec {
        command: launch.argv.clone(),
        cwd: record.worktree.clone(),
        env,
        raw: launch.raw_pty,
        input: launch.input.into(),
        first_input: launch.first_input.clone(),
        restart: resolved.restart,
        rows: 50,
        cols: 160,
    };
    std::fs::create_dir_all(&agent_dir.dir).map_err(|e| Error::io("cannot create", &agent_dir.dir, e))?;
    let spec_bytes = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(agent_dir.spec())
        .and_then(|mut f| std::io::Write::write_all(&mut f, &spec_bytes))
        .map_err(|e| Error::io("cannot write", &agent_dir.spec(), e))?;
    Ok(())
}

/// Starts the monitor of an agent whose spec is written, in its own
/// session, and waits until it reports the agent running.
async fn start_monitor(inner: &Arc<Inner>, agent_dir: &AgentDir, record: &AgentRecord) -> Result<Launched> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(agent_dir.monitor_log())
        .map_err(|e| Error::io("cannot open", &agent_dir.monitor_log(), e))?;

    let mut command = tokio::process::Command::new(&inner.exe);
    command
        .arg("monitor")
        .arg(&agent_dir.dir)
        .current_dir(&inner.state.dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| Error::other(e.to_string()))?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the monitor gets its own session
    // so no terminal signal meant for the daemon reaches it.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| Error::other(format!("cannot start the monitor: {e}")))?;

    let deadline = Instant::now() + MONITOR_START_TIMEOUT;
    let outcome = loop {
        if let Ok(stream) = UnixStream::connect(agent_dir.socket()).await {
            match tokio::time::timeout(Duration::from_secs(5), hello_monitor(stream)).await {
                Ok(Ok((stream, MonitorMessage::Status { pid, monitor_pid, exit: None, .. }))) if pid != 0 => {
                    break Ok(Launched::Running { stream, pid, monitor_pid });
                }
                // Not started yet, or ended already: look again below.
                _ => {}
            }
        }
        if let Some(exit) = monitor::read_exit_record(agent_dir) {
            if exit.error.is_some() {
                break Err(start_error(&record.command, &exit));
            }
            // It ran, and ended before the first connect.
            let monitor_pid =
                std::fs::read_to_string(agent_dir.monitor_pid()).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            break Ok(Launched::Ended { pid: exit.pid, monitor_pid });
        }
        if let Ok(Some(status)) = child.try_wait() {
            if monitor::read_exit_record(agent_dir).is_none() {
                let tail = std::fs::read_to_string(agent_dir.monitor_log()).unwrap_or_default();
                break Err(Error::other(format!(
                    "the monitor exited ({status}) before the agent started: {}",
                    tail.trim()
                )));
            }
            continue;
        }
        if Instant::now() > deadline {
            let _ = child.start_kill();
            break Err(Error::other("the monitor did not come up within 20 s"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The daemon reaps the monitors it started; adopted ones belong to init.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    outcome
}

/// What starting a monitor gave.
enum Launched {
    /// The agent runs; the stream is the daemon's connection to its monitor.
    Running { stream: UnixStream, pid: u32, monitor_pid: u32 },
    /// The agent ran and ended before the daemon could connect.
    Ended { pid: u32, monitor_pid: u32 },
}

impl Launched {
    fn pids(&self) -> (u32, u32) {
        match self {
            Launched::Running { pid, monitor_pid, .. } | Launched::Ended { pid, monitor_pid } => (*pid, *monitor_pid),
        }
    }

    fn stream(self) -> Option<UnixStream> {
        match self {
            Launched::Running { stream, .. } => Some(stream),
            Launched::Ended { .. } => None,
        }
    }
}

fn start_error(command: &[String], record: &ExitRecord) -> Error {
    Error::new(
        ErrorKind::CommandNotFound,
        format!("cannot start {:?}: {}", command.join(" "), record.error.clone().unwrap_or_default()),
    )
}

/// Says hello to a monitor as the daemon and reads its status line.
async fn hello_monitor(mut stream: UnixStream) -> std::io::Result<(UnixStream, MonitorMessage)> {
    stream.write_all(b"{\"role\":\"daemon\"}\n").await?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    // Read exactly one line, byte by byte, so nothing after it is consumed.
    loop {
        use tokio::io::AsyncReadExt;
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    let message = serde_json::from_slice(&line).map_err(std::io::Error::other)?;
    Ok((stream, message))
}

// ---- watching monitors -----------------------------------------------------

/// What the rest of the daemon asks of one agent's watcher. Sends go
/// through the watcher so that message ids and delivery order are decided
/// in one place, in order.
enum AgentCommand {
    Stop { grace_secs: f64 },

    Send { from: String, text: String, reply: oneshot::Sender<Result<String>> },
}

/// Starts the task that follows one monitor until its agent has ended.
/// With no stream (the agent already ended), it settles from the exit record.
fn start_watcher(inner: &Arc<Inner>, record: AgentRecord, stream: Option<UnixStream>) {
    let (tx, rx) = mpsc::unbounded_channel();
    inner.monitors.lock().unwrap().insert(record.address.clone(), tx.clone());
    if record.stop_requested {
        // A stop arrived while the agent was starting.
        let _ = tx.send(AgentCommand::Stop { grace_secs: record.grace_secs.unwrap_or(DEFAULT_GRACE_SECS) });
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        let address = record.address.clone();
        watch_monitor(&inner, record, stream, rx).await;
        inner.monitors.lock().unwrap().remove(&address);
    });
}

/// Turns an agent's output log into events: `output` lines for a plain
/// CLI, the harness parser's events for a structured one.
struct OutputReader {
    cursor: LineCursor,
    parser: Option<Box<dyn corral_harness::Parser>>,
    limiter: Limiter,
    /// What the current run's probes see: lines, event names, activity.
    observations: Option<Arc<corral_probes::AgentObservations>>,
}

impl OutputReader {
    /// A reader that resumes after the last journaled line. The parser is
    /// brought to the same state by reading the log up to there again.
    fn resume(record: &AgentRecord, log: PathBuf) -> OutputReader {
        let parser = if record.harness == "generic" { None } else { corral_harness::parser_for(&record.harness) };
        let mut reader = OutputReader {
            cursor: LineCursor::new(log.clone(), 0),
            parser,
            limiter: Limiter::default(),
            observations: None,
        };
        match reader.parser.as_mut() {
            Some(parser) if record.log_offset > 0 => {
                if let Ok(lines) = reader.cursor.read(Some(record.log_offset), false) {
                    for line in lines {
                        parser.feed_line(trim_cr(&line.bytes));
                    }
                }
            }
            _ => reader.cursor = LineCursor::new(log, record.log_offset),
        }
        reader
    }

    /// The events for the lines written since the last call.
    fn read(&mut self, last: bool) -> std::io::Result<Vec<EventBody>> {
        let mut bodies = Vec::new();
        let lines = self.cursor.read(None, last)?;
        if let Some(observations) = &self.observations {
            let now = std::time::Instant::now();
            for line in &lines {
                observations.record_line(&clean_line(&line.bytes), now);
            }
        }
        for line in lines {
            let Some(parser) = self.parser.as_mut() else {
                let text = clean_line(&line.bytes);
                if text.is_empty() {
                    continue;
                }
                if let Some(skipped) = self.limiter.admit() {
                    bodies.push(EventBody::Output { text, offset: line.offset, skipped });
                }
                continue;
            };
            for event in parser.feed_line(trim_cr(&line.bytes)) {
                let mut body = EventBody::from_harness(event, line.offset);
                if let Some(observations) = &self.observations {
                    let now = std::time::Instant::now();
                    if let EventBody::SessionStarted { .. } = body {
                        // Claude Code's system/init: `readiness = { event = "init" }`.
                        observations.record_event("init", now);
                    }
                    observations.record_event(body.type_name(), now);
                }
                // Only chatter is rate-limited; usage, tools and results never are.
                if let EventBody::Progress { skipped, .. } = &mut body {
                    match self.limiter.admit() {
                        Some(n) => *skipped = n,
                        None => continue,
                    }
                }
                bodies.push(body);
            }
        }
        if last {
            let skipped = self.limiter.take_skipped();
            if skipped > 0 {
                // Say how many lines were left out, even with nothing after them.
                bodies.push(EventBody::Output { text: String::new(), offset: self.cursor.offset(), skipped });
            }
        }
        Ok(bodies)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

async fn watch_monitor(
    inner: &Arc<Inner>,
    record: AgentRecord,
    stream: Option<UnixStream>,
    mut commands: mpsc::UnboundedReceiver<AgentCommand>,
) {
    let agent_dir = inner.state.agent(record.id);
    let mut reader = OutputReader::resume(&record, agent_dir.log());
    let exit = match stream {
        Some(stream) => follow_monitor(inner, &record, &mut reader, stream, &mut commands).await,
        None => monitor::read_exit_record(&agent_dir),
    };
    flush_output(inner, &record, &mut reader, true).await;
    // Whoever still waits to send learns the agent has ended.
    commands.close();
    while let Some(command) = commands.recv().await {
        if let AgentCommand::Send { reply, .. } = command {
            let _ = reply.send(Err(Error::new(ErrorKind::Refused, format!("{} has ended", record.address))));
        }
    }
    settle(inner, record, exit).await;
}

/// Relays commands to the monitor and output from it until the agent ends;
/// returns its exit record (None if the monitor vanished without one).
async fn follow_monitor(
    inner: &Arc<Inner>,
    record: &AgentRecord,
    reader: &mut OutputReader,
    stream: UnixStream,
    commands: &mut mpsc::UnboundedReceiver<AgentCommand>,
) -> Option<ExitRecord> {
    let agent_dir = inner.state.agent(record.id);
    touch(inner, &record.address);
    let (monitor_out, mut monitor_in) = stream.into_split();
    let mut lines = BufReader::new(monitor_out).lines();
    let mut probes = ProbeRun::start(inner, record, reader);
    let mut restarting = false;
    // Messages handed to the monitor as follow-ups, not yet started.
    let mut handed = HashSet::new();
    // Catch up on output written while nobody watched, and on messages
    // accepted but not delivered before a daemon restart.
    flush_output(inner, record, reader, false).await;
    deliver_pending(inner, &record.address, &mut monitor_in, &mut handed).await;
    close_input_if_done(inner, &record.address, &mut monitor_in).await;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<MonitorMessage>(&line) {
                    Ok(MonitorMessage::Output { .. }) => {
                        touch(inner, &record.address);
                        // Read to the end of the log, not just to `log_len`: notices
                        // queued behind this one then find nothing new, so a
                        // chatty agent costs one journal write per batch, not
                        // one per notice.
                        flush_output(inner, record, reader, false).await;
                        deliver_pending(inner, &record.address, &mut monitor_in, &mut handed).await;
                        close_input_if_done(inner, &record.address, &mut monitor_in).await;
                    }
                    Ok(MonitorMessage::Restarting { count, reason, backoff_secs, code, signal }) => {
                        let Some(current) = inner.record(&record.address) else { continue };
                        // The run's probes end with it; the next run gets new ones.
                        probes = None;
                        reader.observations = None;
                        restarting = true;
                        let body = EventBody::Restarted { count, reason, backoff_secs, code, signal };
                        inner.commit_logged(vec![inner.draft(&current, body)]).await;
                    }
                    Ok(MonitorMessage::Started { pid, tag }) => {
                        // A restart or a follow-up: the agent goes on under a new pid.
                        if std::mem::take(&mut restarting) {
                            probes = ProbeRun::start(inner, record, reader);
                            touch(inner, &record.address);
                        }
                        let Some(current) = inner.record(&record.address) else { continue };
                        let monitor_pid = current.monitor_pid.unwrap_or(0);
                        let mut bodies = vec![EventBody::Started { pid, monitor_pid }];
                        if let Some(message_id) = tag {
                            bodies.push(EventBody::MessageDelivered { message_id });
                        }
                        let drafts = bodies.into_iter().map(|b| inner.draft(&current, b)).collect();
                        inner.commit_logged(drafts).await;
                    }
                    Ok(MonitorMessage::Exit { record }) => return Some(record),
                    Ok(MonitorMessage::Status { .. }) => {}
                    Err(err) => eprintln!("corral: {}: bad monitor message {line:?}: {err}", record.address),
                },
                // The monitor went away: its exit record says how it ended.
                Ok(None) | Err(_) => return monitor::read_exit_record(&agent_dir),
            },
            event = next_probe_event(&mut probes) => {
                let Some(current) = inner.record(&record.address) else { continue };
                let kill = event.verdict().is_some();
                inner.commit_logged(vec![inner.draft(&current, probe_body(&event))]).await;
                if kill {
                    probes = None;
                    let grace_secs = current.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
                    let stop = MonitorCommand::Stop { grace_secs, probe_failed: true };
                    let _ = send_monitor(&mut monitor_in, &stop).await;
                }
            }
            Some(command) = commands.recv() => match command {
                AgentCommand::Stop { grace_secs } => {
                    // A failed write shows up as the end of the read side.
                    let stop = MonitorCommand::Stop { grace_secs, probe_failed: false };
                    let _ = send_monitor(&mut monitor_in, &stop).await;
                }
                AgentCommand::Send { from, text, reply } => {
                    let result = accept_message(inner, &record.address, from, text).await;
                    let _ = reply.send(result);
                    deliver_pending(inner, &record.address, &mut monitor_in, &mut handed).await;
                }
            }
        }
    }
}

/// One run's probes: their driver, and the observations fed to it.
struct ProbeRun {
    events: mpsc::UnboundedReceiver<ProbeEvent>,
    driver: tokio::task::JoinHandle<corral_probes::DriverExit>,
}

impl Drop for ProbeRun {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl ProbeRun {
    /// Starts the probes of the agent's current run (none if it has none)
    /// and has `reader` feed them its output lines and events.
    fn start(inner: &Arc<Inner>, record: &AgentRecord, reader: &mut OutputReader) -> Option<ProbeRun> {
        if record.probes.is_empty() {
            return None;
        }
        let spec: Option<MonitorSpec> =
            std::fs::read(inner.state.agent(record.id).spec()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let env = spec.map(|s| s.env.into_iter().map(|(k, v)| (k.into(), v.into())).collect()).unwrap_or_default();
        let clock: Arc<dyn corral_probes::Clock> = Arc::new(corral_probes::SystemClock);
        let started = clock.now();
        let observations =
            Arc::new(corral_probes::AgentObservations::new(record.worktree.clone(), env, &record.probes, started));
        let tracker = match corral_probes::ProbeTracker::new(&record.probes, started) {
            Ok(tracker) => tracker,
            Err(err) => {
                eprintln!("corral: {}: probes not run: {err}", record.address);
                return None;
            }
        };
        let (tx, events) = mpsc::unbounded_channel();
        let context: Arc<dyn corral_probes::ProbeContext> = observations.clone();
        let driver = tokio::spawn(corral_probes::run_probes(tracker, context, clock, tx));
        reader.observations = Some(observations);
        Some(ProbeRun { events, driver })
    }
}

/// The next probe event; never, while no probes run.
async fn next_probe_event(run: &mut Option<ProbeRun>) -> ProbeEvent {
    match run.as_mut() {
        Some(run) => match run.events.recv().await {
            Some(event) => event,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

fn probe_body(event: &ProbeEvent) -> EventBody {
    use corral_probes::{KillVerdict, ProbeChange};
    let (change, verdict) = match event.change {
        ProbeChange::Passed => ("passed", None),
        ProbeChange::Failed => ("failed", None),
        ProbeChange::Ready => ("ready", None),
        ProbeChange::NotReady => ("not_ready", None),
        ProbeChange::Kill(KillVerdict::StartupFailed) => ("kill", Some("startup_failed")),
        ProbeChange::Kill(KillVerdict::LivenessFailed) => ("kill", Some("liveness_failed")),
    };
    EventBody::Probe {
        probe: event.probe.as_str().to_string(),
        kind: event.kind.to_string(),
        change: change.to_string(),
        verdict: verdict.map(str::to_string),
        timed_out: event.timed_out,
        message: event.message.clone(),
        consecutive_successes: event.consecutive_successes,
        consecutive_failures: event.consecutive_failures,
    }
}

async fn send_monitor(monitor: &mut tokio::net::unix::OwnedWriteHalf, command: &MonitorCommand) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(command).expect("commands serialize");
    line.push(b'\n');
    monitor.write_all(&line).await
}

/// Journals a message for the agent, so it is never lost; delivery follows.
async fn accept_message(inner: &Arc<Inner>, address: &Address, from: String, text: String) -> Result<String> {
    let record =
        inner.record(address).ok_or_else(|| Error::new(ErrorKind::UnknownAddress, format!("no agent at {address}")))?;
    if let Delivery::Refuse(why) = delivery(&record.harness) {
        return Err(Error::new(ErrorKind::Refused, format!("{address} cannot take messages: {why}")));
    }
    if record.input_closed || record.state.is_terminal() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{address} has finished its task and its input is closed; `corral assign` gives it a new one"),
        ));
    }
    let message_id = format!("{}-m{}", record.task_id, record.messages_sent + 1);
    let sent = EventBody::MessageSent { message_id: message_id.clone(), from, to: address.to_string(), text };
    inner.commit(vec![inner.draft(&record, sent)]).await?;
    Ok(message_id)
}

/// Delivers the agent's journaled messages, oldest first, as far as its
/// harness can take them now: written to its input (then journaled as
/// delivered), or handed to the monitor as a follow-up process (journaled
/// as delivered when it starts). A message that cannot go yet (no session
/// to resume so far) waits, and so does every one after it.
async fn deliver_pending(
    inner: &Arc<Inner>,
    address: &Address,
    monitor: &mut tokio::net::unix::OwnedWriteHalf,
    handed: &mut HashSet<String>,
) {
    let Some(record) = inner.record(address) else { return };
    for message in &record.pending_messages {
        if handed.contains(&message.message_id) {
            continue;
        }
        let command = match delivery(&record.harness) {
            Delivery::Resume => {
                let Some(session) = record.session_id.as_deref() else { return };
                let command = resume_argv(&record.command, session, &message.text);
                MonitorCommand::Then { command, tag: message.message_id.clone() }
            }
            Delivery::StdinJson | Delivery::TypeIntoPty => MonitorCommand::Input {
                data: message_input(&record.harness, &message.text, record.session_id.as_deref()),
                id: Some(message.message_id.clone()),
            },
            Delivery::Refuse(_) => return,
        };
        if let Err(err) = send_monitor(monitor, &command).await {
            eprintln!("corral: {address}: cannot reach the monitor ({err}); messages stay queued");
            return;
        }
        handed.insert(message.message_id.clone());
        if let MonitorCommand::Input { .. } = command {
            let delivered = EventBody::MessageDelivered { message_id: message.message_id.clone() };
            inner.commit_logged(vec![inner.draft(&record, delivered)]).await;
        }
    }
}

/// A JSON-lines agent that has answered all it was given gets its input
/// closed, so the CLI ends.
async fn close_input_if_done(inner: &Arc<Inner>, address: &Address, monitor: &mut tokio::net::unix::OwnedWriteHalf) {
    let Some(record) = inner.record(address) else { return };
    if record.input_done() && send_monitor(monitor, &MonitorCommand::CloseInput).await.is_ok() {
        inner.commit_logged(vec![inner.draft(&record, EventBody::InputClosed {})]).await;
    }
}

/// Settles an ended agent: its last output, then its exit.
async fn settle(inner: &Arc<Inner>, record: AgentRecord, exit: Option<ExitRecord>) {
    let current = inner.record(&record.address).unwrap_or(record);
    let body = match exit {
        Some(exit) => exited_body(&exit, &current),
        None => EventBody::Exited {
            state: AgentState::Lost,
            code: None,
            signal: None,
            reason: Some("its monitor vanished without an exit record".into()),
        },
    };
    if let Err(err) = inner.commit(vec![inner.draft(&current, body)]).await {
        eprintln!("corral: {}: cannot record the exit: {err}", current.address);
    }
    let ended = inner.record(&current.address).unwrap_or(current);
    // A task queued with `assign --queue` runs next, unless it was stopped.
    if matches!(ended.state, AgentState::Succeeded | AgentState::Failed) {
        if let Some((task_id, task)) = ended.queued_tasks.first().cloned() {
            if let Err(err) = start_assigned(inner, &ended, task_id, task).await {
                eprintln!("corral: {}: cannot start its queued task: {err}", ended.address);
            }
            return;
        }
    }
    // A slot is free: the next pending agent may start.
    let dispatcher = inner.clone();
    tokio::spawn(async move { dispatch_pending(&dispatcher).await });
    if ended.state == AgentState::Succeeded && ended.merge.policy == crate::config::MergePolicy::Auto {
        enqueue_merge(inner, &ended.address, None, None).await;
    }
}

fn exited_body(exit: &ExitRecord, record: &AgentRecord) -> EventBody {
    let stop_requested = record.stop_requested || exit.stop_requested;
    let expects_result = corral_harness::launch::reports_results(&record.harness);
    let result = record.result.as_ref();
    let state = classify_exit(exit.code, exit.signal, stop_requested, result, expects_result, record.stopped_for);
    let result_failed = result.filter(|r| !r.success);
    let reason = match (state, exit.code, exit.signal, result_failed) {
        (AgentState::BudgetExceeded | AgentState::TimedOut, _, _, _) => Some(match record.exceeded {
            Some((kind, used, limit)) => format!("budget exceeded: {}", kind.describe(used, limit)),
            None => format!(
                "budget exceeded: {} (the budget of an agent above it)",
                record.stopped_for.map_or("?", BudgetKind::as_str)
            ),
        }),
        (AgentState::Stopped, _, _, _) => Some("stopped on request".to_string()),
        (AgentState::Failed, _, _, _) if record.probe_killed.is_some() => record.probe_killed.clone(),
        (_, _, Some(signal), _) => Some(format!("killed by signal {signal}")),
        (AgentState::Failed, _, _, Some(result)) => {
            Some(result.reason.clone().unwrap_or_else(|| "the agent reported an error".into()))
        }
        (AgentState::Failed, Some(0), _, None) => Some("it exited without reporting a result".into()),
        (AgentState::Failed, Some(code), _, _) => Some(format!("exited with code {code}")),
        _ => None,
    };
    EventBody::Exited { state, code: exit.code, signal: exit.signal, reason }
}

/// Reads the output written since the last call and journals it.
async fn flush_output(inner: &Arc<Inner>, record: &AgentRecord, reader: &mut OutputReader, last: bool) {
    let bodies = match reader.read(last) {
        Ok(bodies) => bodies,
        Err(err) => {
            eprintln!("corral: {}: cannot read output: {err}", record.address);
            return;
        }
    };
    if bodies.is_empty() {
        return;
    }
    let mut bodies = bodies;
    price_usage(inner, record, &mut bodies);
    let spent = bodies.iter().any(|b| matches!(b, EventBody::Usage { .. }));
    let drafts = bodies.into_iter().map(|body| inner.draft(record, body)).collect();
    if let Err(err) = inner.commit(drafts).await {
        eprintln!("corral: {}: cannot journal output: {err}", record.address);
    }
    if spent {
        enforce_budgets(inner, &record.address).await;
    }
}

// ---- slots (max_threads) ---------------------------------------------------

/// True when fewer agents run than `[supervisor] max_threads` allows (or
/// there is no limit). Callers hold `Inner::slots`.
fn slot_free(inner: &Inner) -> bool {
    let Some(max) = inner.config().supervisor.max_threads else { return true };
    let running = inner.table.lock().unwrap().agents.values().filter(|a| a.state == AgentState::Running).count();
    running < max as usize
}

/// Starts pending agents, oldest first, while slots are free.
async fn dispatch_pending(inner: &Arc<Inner>) {
    let _slots = inner.slots.lock().await;
    loop {
        if !slot_free(inner) {
            return;
        }
        let next = {
            let table = inner.table.lock().unwrap();
            table.agents.values().filter(|a| a.state == AgentState::Pending).min_by_key(|a| a.id).cloned()
        };
        let Some(record) = next else { return };
        let agent_dir = inner.state.agent(record.id);
        match start_monitor(inner, &agent_dir, &record).await {
            Ok(launched) => {
                let (pid, monitor_pid) = launched.pids();
                inner.commit_logged(vec![inner.draft(&record, EventBody::Started { pid, monitor_pid })]).await;
                let record = inner.record(&record.address).unwrap_or(record);
                start_watcher(inner, record, launched.stream());
            }
            Err(err) => {
                let body = EventBody::Exited {
                    state: AgentState::Failed,
                    code: None,
                    signal: None,
                    reason: Some(format!("could not be started: {}", err.message)),
                };
                inner.commit_logged(vec![inner.draft(&record, body)]).await;
            }
        }
    }
}

// ---- adoption --------------------------------------------------------------

/// Reconnects to every agent the journal says is starting or running.
async fn adopt_all(inner: &Arc<Inner>) {
    // Pending agents have no monitor yet: the dispatcher starts them.
    let live: Vec<AgentRecord> = inner
        .table
        .lock()
        .unwrap()
        .agents
        .values()
        .filter(|a| !a.state.is_terminal() && a.state != AgentState::Pending)
        .cloned()
        .collect();
    for record in live {
        adopt(inner, record).await;
    }
}

async fn adopt(inner: &Arc<Inner>, record: AgentRecord) {
    let agent_dir = inner.state.agent(record.id);
    if let Ok(stream) = UnixStream::connect(agent_dir.socket()).await {
        if let Ok((stream, MonitorMessage::Status { pid, monitor_pid, exit, .. })) = hello_monitor(stream).await {
            if pid != 0 && exit.is_none() {
                inner.commit_logged(vec![inner.draft(&record, EventBody::Adopted { pid, monitor_pid })]).await;
                let record = inner.record(&record.address).unwrap_or(record);
                start_watcher(inner, record, Some(stream));
                return;
            }
        }
    }
    // No live monitor: the exit record tells how the agent ended.
    if let Some(exit) = monitor::read_exit_record(&agent_dir) {
        let mut reader = OutputReader::resume(&record, agent_dir.log());
        flush_output(inner, &record, &mut reader, true).await;
        if record.state == AgentState::Starting && exit.error.is_some() {
            discard_unstarted(inner, &record, "it could not be started").await;
            return;
        }
        let record = inner.record(&record.address).unwrap_or(record);
        let body = exited_body(&exit, &record);
        inner.commit_logged(vec![inner.draft(&record, body)]).await;
        return;
    }
    if record.state == AgentState::Starting {
        // The daemon died between making the worktree and starting the agent.
        discard_unstarted(inner, &record, "the daemon stopped before the agent started").await;
        return;
    }
    let body = EventBody::Exited {
        state: AgentState::Lost,
        code: None,
        signal: None,
        reason: Some("its monitor vanished without an exit record".into()),
    };
    inner.commit_logged(vec![inner.draft(&record, body)]).await;
}

async fn discard_unstarted(inner: &Arc<Inner>, record: &AgentRecord, why: &str) {
    let _git = inner.git.lock().await;
    let (repo, branch, path) = (inner.state.repo_root.clone(), record.branch.clone(), record.worktree.clone());
    let _ = blocking(move || worktree::discard(&repo, &branch, &path)).await;
    inner.commit_logged(vec![inner.draft(record, EventBody::SpawnFailed { reason: why.into() })]).await;
}

// ---- stop, wait, gc --------------------------------------------------------

/// Stops an agent and its subtree; `/root` stops every agent. Each agent
/// gets `grace_secs` if given, else its own grace (`spawn --grace`, or
/// `[supervisor] grace` when it was spawned), else the default.
async fn stop(inner: &Arc<Inner>, address: &str, grace_secs: Option<f64>) -> Result<Response> {
    let grace_secs = grace_secs
        .map(|g| crate::model::duration::from_secs(g).map(|d| d.as_secs_f64()))
        .transpose()
        .map_err(|e| Error::new(ErrorKind::BadBudget, format!("--grace: {e}")))?;
    let top = Address::parse(address)?;
    let top_record = if top.is_root() { None } else { Some(inner.find(address)?) };
    let targets: Vec<AgentRecord> = {
        let table = inner.table.lock().unwrap();
        let scope: Vec<&AgentRecord> = match &top_record {
            Some(record) => table.subtree(&record.address),
            None => table.agents.values().collect(),
        };
        scope.into_iter().filter(|a| !a.state.is_terminal()).cloned().collect()
    };
    let grace_of = |agent: &AgentRecord| grace_secs.or(agent.grace_secs).unwrap_or(DEFAULT_GRACE_SECS);
    let drafts = targets
        .iter()
        .filter(|a| !a.stop_requested)
        .map(|a| inner.draft(a, EventBody::StopRequested { grace_secs: grace_of(a), budget: None }))
        .collect();
    inner.commit(drafts).await?;
    for agent in &targets {
        if agent.state == AgentState::Pending {
            // Nothing runs yet: it ends here.
            let body = EventBody::Exited {
                state: AgentState::Stopped,
                code: None,
                signal: None,
                reason: Some("stopped before it started".into()),
            };
            inner.commit(vec![inner.draft(agent, body)]).await?;
            continue;
        }
        let sender = inner.monitors.lock().unwrap().get(&agent.address).cloned();
        if let Some(sender) = sender {
            let _ = sender.send(AgentCommand::Stop { grace_secs: grace_of(agent) });
        }
    }
    let addresses: Vec<Address> = targets.iter().map(|a| a.address.clone()).collect();
    // The monitor escalates to SIGKILL after the grace; allow for a slow box.
    let longest = targets.iter().map(grace_of).fold(0.0, f64::max);
    let limit = Duration::from_secs_f64(longest) + Duration::from_secs(30);
    wait_for(inner, &addresses, Some(limit)).await;
    let table = inner.table.lock().unwrap();
    let mut all: Vec<AgentRecord> = match &top_record {
        Some(record) => table.subtree(&record.address).into_iter().cloned().collect(),
        None => table.agents.values().cloned().collect(),
    };
    all.retain(|a| addresses.contains(&a.address) || Some(&a.address) == top_record.as_ref().map(|r| &r.address));
    Ok(Response::Stopped { agents: all })
}

async fn wait(inner: &Arc<Inner>, addresses: &[String], timeout_secs: Option<f64>) -> Result<Response> {
    let mut wanted = Vec::new();
    for text in addresses {
        wanted.push(inner.find(text)?.address);
    }
    let timeout = timeout_secs
        .map(crate::model::duration::from_secs)
        .transpose()
        .map_err(|e| Error::new(ErrorKind::BadBudget, format!("--timeout: {e}")))?;
    let (agents, timed_out) = wait_for(inner, &wanted, timeout).await;
    Ok(Response::Waited { agents, timed_out })
}

/// Waits until every address has ended, or the timeout passes.
async fn wait_for(inner: &Arc<Inner>, addresses: &[Address], timeout: Option<Duration>) -> (Vec<AgentRecord>, bool) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seq = inner.seq.subscribe();
    loop {
        seq.borrow_and_update();
        let records: Vec<AgentRecord> = {
            let table = inner.table.lock().unwrap();
            addresses.iter().filter_map(|a| table.agents.get(a).cloned()).collect()
        };
        if records.iter().all(AgentRecord::is_done) {
            return (records, false);
        }
        let changed = seq.changed();
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return (records, true);
                }
            }
            None => {
                let _ = changed.await;
            }
        }
    }
}

/// Removes the worktrees of agents that are done (their merge settled),
/// and their branches when the target already holds every commit. Work
/// that is not on the target (uncommitted files, unmerged or squashed
/// commits) is kept unless `force`, and then named.
async fn gc(inner: &Arc<Inner>, force: bool) -> Result<Response> {
    let candidates: Vec<AgentRecord> =
        inner.table.lock().unwrap().agents.values().filter(|a| a.is_done() && !a.removed).cloned().collect();
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    let _git = inner.git.lock().await;
    for agent in candidates {
        let repo = inner.state.repo_root.clone();
        let (path, branch, target) = (agent.worktree.clone(), agent.branch.clone(), agent.merge.target.clone());
        let entry = |why: String, deleted_branch: Option<String>| GcEntry {
            address: agent.address.to_string(),
            worktree: agent.worktree.clone(),
            why,
            deleted_branch,
        };
        let outcome = blocking(move || {
            worktree::remove(&repo, &path, force)?;
            let merged = match &target {
                Some(target) => crate::git::merge::is_merged(&repo, &branch, target).unwrap_or(false),
                None => false,
            };
            let exists = worktree::branch_tip(&repo, &branch).is_some();
            if exists && (merged || force) {
                worktree::delete_branch(&repo, &branch)?;
                return Ok((true, merged));
            }
            Ok((false, merged))
        })
        .await;
        match outcome {
            Ok((deleted, merged)) => {
                let deleted_branch = deleted.then(|| agent.branch.clone());
                let body =
                    EventBody::Removed { worktree: agent.worktree.clone(), deleted_branch: deleted_branch.clone() };
                inner.commit(vec![inner.draft(&agent, body)]).await?;
                let why = match (deleted, merged) {
                    (true, true) => format!("{}; branch {} merged and deleted", agent.state.as_str(), agent.branch),
                    (true, false) => {
                        format!("{}; UNMERGED branch {} deleted (--force)", agent.state.as_str(), agent.branch)
                    }
                    (false, _) => format!(
                        "{}; branch {} kept (not all of it is on its target)",
                        agent.state.as_str(),
                        agent.branch
                    ),
                };
                removed.push(entry(why, deleted_branch));
            }
            Err(err) => kept.push(entry(err.message, None)),
        }
    }
    Ok(Response::Gc { removed, kept })
}

// ---- events ----------------------------------------------------------------

async fn stream_events(
    inner: &Arc<Inner>,
    client_reader: &mut tokio::net::unix::OwnedReadHalf,
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    since: u64,
    follow: bool,
    agent: Option<String>,
) -> std::io::Result<()> {
    let filter = match agent.as_deref().map(Address::parse).transpose() {
        Ok(filter) => filter,
        Err(err) => return framed::write(writer, &Response::Error(err)).await,
    };
    let mut seq = inner.seq.subscribe();
    let mut reader = JournalReader::open(&inner.state.journal(), since).map_err(std::io::Error::other)?;
    let mut hangup = [0u8; 1];
    loop {
        seq.borrow_and_update();
        for event in reader.read_new().map_err(std::io::Error::other)? {
            let wanted = match (&filter, &event.agent) {
                (None, _) => true,
                (Some(prefix), Some(agent)) => agent.is_within(prefix),
                (Some(_), None) => false,
            };
            if wanted {
                framed::write(writer, &Response::Event { event: Box::new(event) }).await?;
            }
        }
        if !follow {
            return framed::write(writer, &Response::End).await;
        }
        tokio::select! {
            _ = seq.changed() => {}
            // The client hung up.
            _ = tokio::io::AsyncReadExt::read(client_reader, &mut hangup) => return Ok(()),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::other(format!("a worker thread failed: {e}")))?
}
