//! The daemon: one per repository. It accepts client requests on
//! `daemon.sock`, starts agents (worktree, then monitor), keeps one
//! connection to every monitor, turns what monitors report into events,
//! and answers from the agent table, the fold of the journal. It owns no
//! agent process: monitors do, so the daemon can die and come back. On
//! start it re-adopts every agent the journal says is running.
//!
//! Its inside is a few owners that talk by messages (in the manner of
//! watchexec's supervisor), each in its own room:
//!
//! | owner | owns | others reach it by |
//! |---|---|---|
//! | `store` | the journal file, the agent table, the seq: its writer thread is the only writer of both | `commit(drafts)`, `read(closure)` |
//! | `agent` | one task per live agent: its monitor connection, output reader and parser, probes, budget checks after usage, message delivery | a `Control` message through `Agents` |
//! | `merges` | the merge queue: one worker, gates run holding nothing | a `MergeJob` on its channel |
//! | `pool` | the warm worktree pool's filling: one task, fills run holding no lock | a base on its refill channel |
//! | `start` | the one start path (spawn, pending dispatch, assign) behind the `Runtime` seam, where an agent's process comes to life | `start_or_queue`, `dispatch_pending` |
//!
//! Requests (`requests`) are read top to bottom: `spawn` resolves settings
//! (pure), makes the worktree, starts, journals; `ops` stops, waits and
//! collects garbage; `events` streams the journal; `adopt` reconnects
//! after a restart; `budgets` and `assign` hold their rules.
//!
//! Every change is journaled (and fsynced) before anyone hears of it.
//!
//! Locks that remain, and their order (no guard is ever held across an
//! `.await`):
//! - `Daemon::reserved` (spawns in flight) is taken alone, or before the
//!   table's read lock (through `Store::read`), never after it;
//! - `Daemon::activity` and `Agents` are taken alone;
//! - `Daemon::config` is no lock: `Daemon::config()` hands out a snapshot;
//! - the tokio mutexes `slots` and `git` are held across awaits: `slots`
//!   may be taken before `git`, never after it; a merge gate holds neither;
//! - `budget_checks` (a tokio mutex) is held from a budget check to the
//!   commit of its decision, and with nothing else.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use crate::daemon::journal::Draft;
use crate::model::address::Address;
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::{Event, EventBody};
use crate::model::lifecycle::AgentRecord;
use crate::sys::paths::StateDir;

mod adopt;
mod agent;
mod archive;
mod assign;
mod budgets;
mod events;
pub mod journal;
mod listing;
mod merges;
mod notices;
mod ops;
mod pool;
mod probe_run;
mod reader;
mod requests;
mod snapshot;
mod spawn;
mod start;
mod store;
#[cfg(test)]
mod tests;
mod upstream;

/// Spawns in flight, and the next agent id.
#[derive(Default)]
struct Reserved {
    addresses: HashSet<Address>,
    next_id: u64,
}

/// The daemon's owners, shared by its tasks.
pub(crate) struct Daemon {
    state: StateDir,
    /// This daemon's build (see `wire::protocol::build_id`).
    build: String,
    /// The journal's writer and the agent table.
    store: store::Store,
    /// The control channels of the agents' tasks.
    agents: agent::Agents,
    /// Where agents' processes come to life.
    runtime: Arc<dyn start::Runtime>,
    /// corral.toml as last read (at start and at each spawn): the daily
    /// budget, prices, limits. Read through `Daemon::config`.
    config: watch::Sender<Arc<crate::config::Config>>,
    /// The merge queue's input.
    merges: mpsc::UnboundedSender<merges::MergeJob>,
    /// Ready worktrees (`[supervisor] worktree_pool`), and the bases to
    /// refill it for.
    pool: Arc<crate::git::pool::Pool>,
    refills: mpsc::UnboundedSender<Option<String>>,
    /// Spawns in flight, so concurrent spawns of one name cannot clash.
    reserved: Mutex<Reserved>,
    /// When each running agent last printed anything (for idle budgets).
    activity: Mutex<HashMap<Address, Instant>>,
    /// Serializes corral's own git changes (worktree add and remove, a
    /// merge's steps). Never held while a gate runs.
    git: tokio::sync::Mutex<()>,
    /// Held while deciding whether an agent may start (max_threads).
    slots: tokio::sync::Mutex<()>,
    /// Held from a budget check to the commit of what it decided, so two
    /// agents crossing one budget at once journal one `budget_exceeded`.
    budget_checks: tokio::sync::Mutex<()>,
    /// The real API keys of proxy-metered agents, by agent id: in memory
    /// only (a daemon restart forgets them), handed to each monitor of the
    /// agent on its standard input at start.
    keys: Mutex<HashMap<u64, crate::wire::monitor::ProxyKeys>>,
    /// Model calls admitted and not yet reported, by agent and call, with
    /// the tokens each may spend (its estimated input and its output cap).
    /// An admission counts them as spent, so calls made at once under one
    /// budget cannot together go past it.
    calls_in_flight: Mutex<HashMap<Address, HashMap<u64, budgets::Admitted>>>,
    /// Told each time a call in flight is reported or let go.
    calls_settled: tokio::sync::Notify,
    /// Told each time `corral budget` raises a limit: held calls of paused
    /// agents are decided again.
    budget_raised: tokio::sync::Notify,
    /// The estimated input of the call each paused agent is held at: a
    /// raise resumes it only once that call fits.
    held_inputs: Mutex<HashMap<Address, u64>>,
    /// The daemon is its process (`corral daemon`), not a test's guest: it
    /// may exit the process when its repository is deleted.
    owns_process: bool,
    /// When this daemon started: a git lock older than that, in an ended
    /// agent's worktree, is a killed daemon's.
    started: std::time::SystemTime,
}

/// Runs the daemon in the foreground until `Shutdown` or a signal.
pub fn run(state: StateDir) -> anyhow::Result<()> {
    state.create()?;
    crate::sys::logging::init();
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
    let _ = crate::wire::protocol::binary_stamp();
    crate::cli::client::check_owner(&state)?;
    std::fs::write(state.pid_file(), std::process::id().to_string())?;

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let exe = std::env::current_exe()?;
    let monitors = start::LocalMonitors::new(exe, state.dir.clone());
    runtime.block_on(serve(state, Arc::new(monitors)))
}

/// Serves until `Shutdown` or Ctrl-C, starting agents through `runtime`.
async fn serve(state: StateDir, runtime: Arc<dyn start::Runtime>) -> anyhow::Result<()> {
    let daemon = Daemon::start(state, runtime, true).await?;
    let socket = daemon.state.socket();
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!("daemon {} serving {}", std::process::id(), socket.display());

    let (stop_tx, mut stop_rx) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (daemon, stop_tx) = (daemon.clone(), stop_tx.clone());
                tokio::spawn(async move {
                    if let Err(err) = requests::serve_client(daemon, stream, stop_tx).await {
                        tracing::warn!("client connection: {err}");
                    }
                });
            }
            _ = stop_rx.changed() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = std::fs::remove_file(&socket);
    daemon.store.settle().await;
    tracing::info!("daemon {} stopped; agents keep running", std::process::id());
    Ok(())
}

impl Daemon {
    /// Brings the daemon's owners up for the repository of `state`: reads
    /// corral.toml, folds the journal, re-adopts the agents it says run,
    /// starts the budget clock and the merge queue (finishing merges a
    /// killed daemon left), and starts pending agents. Serving requests is
    /// the caller's (`serve`, or a test calling `requests::handle`).
    async fn start(
        state: StateDir,
        runtime: Arc<dyn start::Runtime>,
        owns_process: bool,
    ) -> anyhow::Result<Arc<Daemon>> {
        let daemon_started = std::time::SystemTime::now();
        crate::git::configure();
        let config = crate::config::Config::load(&state.repo_root).unwrap_or_else(|err| {
            tracing::warn!("{err}; using no daily budget or prices until it is fixed");
            crate::config::Config::default()
        });
        let mut state = state;
        if let Some(root) = &config.supervisor.worktree_root {
            // `[supervisor] worktree_root` (read when the daemon starts) wins
            // over CORRAL_WORKTREE_ROOT and the XDG default.
            state.worktrees = crate::sys::paths::worktrees_for(root, &state.repo_root);
        }
        let store = store::Store::open(&state.journal())?;
        let next_id = store.read(|table| table.last_id) + 1;
        let (merge_tx, merge_rx) = mpsc::unbounded_channel();
        let (refill_tx, refill_rx) = mpsc::unbounded_channel();
        let daemon = Arc::new(Daemon {
            pool: pool::pool_of(&state),
            refills: refill_tx,
            state,
            build: crate::wire::protocol::build_id(),
            store,
            agents: agent::Agents::default(),
            runtime,
            config: watch::Sender::new(Arc::new(config)),
            merges: merge_tx,
            reserved: Mutex::new(Reserved { addresses: HashSet::new(), next_id }),
            activity: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            calls_in_flight: Mutex::new(HashMap::new()),
            calls_settled: tokio::sync::Notify::new(),
            budget_raised: tokio::sync::Notify::new(),
            held_inputs: Mutex::new(HashMap::new()),
            git: tokio::sync::Mutex::new(()),
            slots: tokio::sync::Mutex::new(()),
            budget_checks: tokio::sync::Mutex::new(()),
            owns_process,
            started: daemon_started,
        });
        let started = EventBody::DaemonStarted { pid: std::process::id() };
        daemon.commit(vec![Draft { agent: None, parent: None, task: None, body: started }]).await?;
        adopt::adopt_all(&daemon).await;
        budgets::start_budget_clock(&daemon);
        // A merge a killed daemon left under way (the checkout of a large
        // tree) is finished while the daemon answers: clients would give
        // up on one that listens only after it.
        let (recovered, recovered_rx) = tokio::sync::oneshot::channel();
        merges::start_merge_queue(&daemon, merge_rx, recovered_rx);
        {
            let daemon = daemon.clone();
            tokio::spawn(async move {
                merges::resume_merges(&daemon, daemon_started).await;
                let _ = recovered.send(());
            });
        }
        pool::start_pool(&daemon, refill_rx);
        start::dispatch_pending(&daemon).await;
        Ok(daemon)
    }

    /// Journals the drafts (fsynced), folds them into the table and wakes
    /// followers: the one way state changes (see `store`).
    async fn commit(&self, drafts: Vec<Draft>) -> Result<Vec<Event>> {
        self.store.commit(drafts).await
    }

    /// `commit` where nobody waits for the answer (a monitor's report, a
    /// merge step): a journal that cannot be written is logged, never
    /// ignored; the table did not move, since it follows the journal.
    async fn commit_logged(&self, drafts: Vec<Draft>) {
        let about: Vec<String> = drafts
            .iter()
            .map(|d| format!("{} {}", d.agent.as_ref().map_or("-".into(), |a| a.to_string()), d.body.type_name()))
            .collect();
        if let Err(err) = self.commit(drafts).await {
            tracing::error!("not journaled ({}): {err}", about.join(", "));
        }
    }

    /// `commit` of what must never be dropped (how an agent ended): while
    /// the journal cannot be written, tries again every second until it
    /// can. Any other refusal is logged and given up.
    async fn commit_retrying(&self, drafts: Vec<Draft>) {
        loop {
            match self.commit(drafts.clone()).await {
                Ok(_) => return,
                Err(err) if err.kind == ErrorKind::StateUnwritable => {
                    tracing::debug!("waiting for the journal: {err}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(err) => {
                    tracing::error!("not journaled: {err}");
                    return;
                }
            }
        }
    }

    /// corral.toml as last read: a snapshot, no lock held.
    fn config(&self) -> Arc<crate::config::Config> {
        self.config.borrow().clone()
    }

    fn record(&self, address: &Address) -> Option<AgentRecord> {
        self.store.record(address)
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

    /// A new agent id (spawns and assigned tasks both count).
    fn next_id(&self) -> u64 {
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        reserved.next_id += 1;
        reserved.next_id - 1
    }

    fn agent_dir(&self, record: &AgentRecord) -> crate::sys::paths::AgentDir {
        self.state.agent(record.id)
    }
}

/// Runs blocking work (git2, file I/O) off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::other(format!("a worker thread failed: {e}")))?
}
