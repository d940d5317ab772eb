//! `corral spawn`, read top to bottom: resolve the settings (corral.toml,
//! the role, the flags: pure), check them (budget, probes, restart,
//! sandbox, depth, the parent's budget), resolve the sandbox against the
//! kernel (`sys::sandbox::resolve`: what cannot be enforced refuses the
//! spawn), reserve the name, make the worktree, write the monitor's spec
//! (with the sandbox's plan and the agent's private folders), then the one
//! start path
//! ([`start::start_or_queue`]). Each step journals before the next; a
//! step that fails takes back what the earlier ones made.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::budgets::{refuse_if_day_spent, subtree_spend};
use super::start::{self, Start};
use super::{blocking, Daemon};
use crate::daemon::journal::Draft;
use crate::git::worktree;
use crate::model::address::Address;
use crate::model::budget::Budget;
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::{AgentRecord, MergeSpec};
use crate::sys::paths::AgentDir;
use crate::sys::sandbox;
use crate::wire::monitor::MonitorSpec;
use crate::wire::protocol::{SpawnRequest, Spawned};
use corral_harness::launch::Launch;
use corral_harness::Harness;

/// A new agent's budget: what it asked for, within what each ancestor
/// with a budget has left (a child never gets more than its parent).
fn grant_budget(daemon: &Daemon, parent: &Address, wanted: &Budget) -> std::result::Result<Budget, String> {
    let mut granted = *wanted;
    for ancestor in parent.agents_up() {
        // An ancestor may be done and put away: its record is read back.
        if let Some(record) = daemon.record(&ancestor) {
            if !record.budget.is_empty() {
                let spend = daemon.store.read(|table| subtree_spend(table, &ancestor));
                let left = record.budget.left_after(&spend);
                granted = Budget::grant(&granted, &left).map_err(|why| format!("{why} (the budget of {ancestor})"))?;
                // What its share of the ancestor's budget does once spent is
                // the ancestor's, unless it says otherwise: a child of a
                // pausing budget pauses rather than being stopped.
                granted.on_exceeded = granted.on_exceeded.or(record.budget.on_exceeded);
            }
        }
    }
    Ok(granted)
}

/// Refuses a spawn below an agent that is being stopped, or was: `corral
/// stop` ends an agent and everything below it, so nothing new starts
/// there (until `corral assign` gives it a new task).
fn refuse_under_stop(daemon: &Daemon, parent: &Address) -> Result<()> {
    for ancestor in parent.agents_up() {
        if let Some(record) = daemon.record(&ancestor).filter(|r| r.stop_requested) {
            let how = if record.state.is_terminal() { "was stopped" } else { "is being stopped" };
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{ancestor} {how}: nothing new starts below it (`corral assign` gives it a new task)"),
            ));
        }
    }
    Ok(())
}

pub(super) async fn spawn_agent(daemon: &Arc<Daemon>, request: SpawnRequest) -> Result<Spawned> {
    let parent = match &request.parent {
        Some(text) => Address::parse(text)?,
        None => Address::root(),
    };
    if !parent.is_root() && daemon.record(&parent).is_none() {
        return Err(Error::new(ErrorKind::UnknownAddress, format!("no agent at {parent} to be the parent")));
    }
    refuse_under_stop(daemon, &parent)?;
    let address = parent.child(&request.name)?;
    if let Some(grace) = request.grace_secs {
        crate::model::duration::checked_secs("--grace", grace)?;
    }
    let mut resolved = resolve_settings(daemon, &address, &request)?;
    refuse_if_day_spent(daemon)?;
    let max_depth = daemon.config().supervisor.max_depth;
    if let Some(max) = max_depth.filter(|max| address.depth() > *max as usize) {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{address} would be {} levels below /root; max_depth is {max}", address.depth()),
        ));
    }
    resolved.budget.validate().map_err(|why| Error::new(ErrorKind::BadBudget, why))?;
    resolved.probes.validate().map_err(|e| Error::new(ErrorKind::BadConfig, format!("invalid probe: {e}")))?;
    resolved.restart.validate().map_err(|why| Error::new(ErrorKind::BadConfig, why))?;
    inherit_sandbox(daemon, &parent, &address, &mut resolved)?;
    refuse_widening_args(&address, &resolved)?;
    resolve_sandbox(daemon, &parent, &address, &request, &mut resolved)?;
    if request.fork_session {
        fork_session(daemon, &parent, &address, &mut resolved)?;
    }
    if resolved.meter == crate::model::budget::Meter::Proxy {
        let proxy = daemon.config().proxy.clone();
        super::upstream::fill_env(&proxy, &mut resolved.env).map_err(|why| Error::new(ErrorKind::BadConfig, why))?;
    }
    plan_metering(&mut resolved)?;
    let launch = build_launch(&resolved)?;
    check_command(&launch.argv[0], &resolved.env)?;

    // Reserve the address and an id, so concurrent spawns cannot clash.
    let id = {
        let mut reserved = daemon.reserved.lock().unwrap_or_else(|e| e.into_inner());
        // An agent `corral gc` removed frees its name: its history stays in
        // the journal under its id, and the new agent's record replaces it.
        let taken = daemon.store.read(|table| table.name_taken(&address));
        if taken || reserved.addresses.contains(&address) {
            return Err(Error::new(ErrorKind::Duplicate, format!("an agent named {address} already exists")));
        }
        reserved.addresses.insert(address.clone());
        reserved.next_id += 1;
        reserved.next_id - 1
    };
    let granted = grant_budget(daemon, &parent, &resolved.budget);
    let result = match granted {
        Ok(budget) => {
            resolved.budget = budget;
            spawn_reserved(daemon, &request, &resolved, &launch, &parent, &address, id).await
        }
        Err(why) => Err(Error::new(ErrorKind::Refused, format!("spawn of {address} refused: {why}"))),
    };
    daemon.reserved.lock().unwrap_or_else(|e| e.into_inner()).addresses.remove(&address);
    result
}

/// The address is reserved; make the worktree and start the monitor.
async fn spawn_reserved(
    daemon: &Arc<Daemon>,
    request: &SpawnRequest,
    resolved: &Resolved,
    launch: &Launch,
    parent: &Address,
    address: &Address,
    id: u64,
) -> Result<Spawned> {
    let repo = daemon.state.repo_root.clone();
    // Under workspace-write its branch is alone in a ref folder of its own,
    // the one folder of refs its sandbox may write.
    let branch = match resolved.sandbox {
        Some(crate::config::Sandbox::WorkspaceWrite) => address.own_folder_branch(),
        _ => address.branch(),
    };
    let other_form = if branch == address.branch() { address.own_folder_branch() } else { address.branch() };
    let git_name = format!("corral-{}", address.flat());
    let worktree_path = daemon.state.worktrees.join(address.flat());
    let task_id = format!("t-{id}");

    // Validate against git before anything is made.
    let base = {
        let (repo, base, branch, other_form) = (repo.clone(), request.base.clone(), branch.clone(), other_form);
        let worktrees = daemon.state.worktrees.clone();
        blocking(move || {
            // A shared worktree folder must be ours alone (see `sys::paths`).
            crate::sys::paths::check_worktrees(&worktrees)?;
            let commit = worktree::resolve_base(&repo, base.as_deref())?;
            worktree::ensure_branch_free(&repo, &branch)?;
            // The other form of its name would clash in git's ref folders.
            worktree::ensure_branch_free(&repo, &other_form)?;
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
            harness: resolved.harness,
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
            sandbox: resolved.sandbox_spec(),
            notify: Some(resolved.notify),
            meter: resolved.meter,
        },
    };
    daemon.commit(vec![spawned]).await.map_err(|mut err| {
        err.message = err.message.replace("nothing was changed", "nothing was started");
        err
    })?;
    let record = daemon.record(address).expect("just spawned");
    tell_parent(daemon, &record).await;

    let fail = |reason: String| {
        let daemon = daemon.clone();
        let record = record.clone();
        async move {
            daemon.commit_logged(vec![daemon.draft(&record, EventBody::SpawnFailed { reason })]).await;
        }
    };

    {
        let _git = daemon.git.lock().await;
        let (repo, name, branch, path, base) =
            (repo.clone(), git_name.clone(), branch.clone(), worktree_path.clone(), base.clone());
        // A ready worktree from the pool when one is at this very commit,
        // else a checkout; either way the same files, index and HEAD.
        let pool = daemon.config().supervisor.worktree_pool.map(|_| daemon.pool.clone());
        let made = blocking(move || {
            if let Some(pool) = pool {
                if pool.take(&base, &branch, &path)? {
                    return Ok(());
                }
            }
            worktree::create(&repo, &name, &branch, &base, &path).map(|_| ())
        })
        .await;
        // Refilled (or emptied, once switched off) in the background.
        let _ = daemon.refills.send(request.base.clone());
        if let Err(err) = made {
            fail(err.message.clone()).await;
            return Err(err);
        }
    }

    let agent_dir = daemon.state.agent(id);
    if let Err(err) = write_monitor_spec(daemon, &agent_dir, resolved, launch, &record).await {
        let _git = daemon.git.lock().await;
        let (repo, branch, path) = (repo.clone(), branch.clone(), worktree_path.clone());
        let _ = blocking(move || worktree::discard(&repo, &branch, &path)).await;
        fail(err.message.clone()).await;
        return Err(err);
    }
    if let Some(metering) = &resolved.metering {
        daemon.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(id, metering.keys.clone());
    }
    match start::start_or_queue(daemon, &record).await {
        Ok(Start::Running { pid }) => {
            Ok(Spawned { address: address.to_string(), task_id, branch, worktree: worktree_path, pid })
        }
        Ok(Start::Queued) => {
            Ok(Spawned { address: address.to_string(), task_id, branch, worktree: worktree_path, pid: 0 })
        }
        Err(err) => {
            let _git = daemon.git.lock().await;
            let (repo, branch, path) = (repo.clone(), branch.clone(), worktree_path.clone());
            let _ = blocking(move || worktree::discard(&repo, &branch, &path)).await;
            fail(err.message.clone()).await;
            Err(err)
        }
    }
}

/// One spawn's settings: corral.toml resolved for the address and role
/// (defaults, then policies by address prefix, then the role), with the
/// command line's own settings on top.
struct Resolved {
    harness: Harness,
    notify: crate::model::notify::Notify,
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
    network: Option<crate::config::Network>,
    limits: sandbox::Limits,
    /// Absolute paths its sandbox may not read.
    deny_read: Vec<PathBuf>,
    /// `sandbox_deny_read` entries that name no absolute path (`~` with no
    /// home known, a relative path): a sandbox that restricts refuses them.
    deny_unplaced: Vec<String>,
    fallback: sandbox::Fallback,
    /// What the kernel offers and will be made to enforce (set by
    /// [`resolve_sandbox`]; `None`: nothing asked for).
    kernel: Option<sandbox::Kernel>,
    enforced: Option<sandbox::Enforced>,
    reasoning_effort: Option<String>,
    /// Where its usage is counted; with the proxy, how it is put behind it.
    meter: crate::model::budget::Meter,
    metering: Option<crate::proxy::plan::Plan>,
}

impl Resolved {
    /// The sandbox as the `spawned` event keeps it; `None` when nothing
    /// of it was asked for (no sandbox, network or limit).
    fn sandbox_spec(&self) -> Option<sandbox::SandboxSpec> {
        let asked = self.sandbox.is_some() || self.network.is_some() || !self.limits.is_empty();
        asked.then(|| sandbox::SandboxSpec {
            mode: self.sandbox,
            network: self.network,
            limits: self.limits,
            enforced: self.enforced.clone(),
        })
    }
}

fn resolve_settings(daemon: &Daemon, address: &Address, request: &SpawnRequest) -> Result<Resolved> {
    let bad = |e: crate::config::ConfigError| Error::new(ErrorKind::BadConfig, e.to_string());
    let config = crate::config::Config::load(&daemon.state.repo_root).map_err(bad)?;
    daemon.config.send_replace(Arc::new(config.clone()));
    let mut settings = config.resolve(&address.to_string(), request.role.as_deref()).map_err(bad)?;
    settings.overlay(&request.settings);
    let harness = settings.harness.unwrap_or_default();
    // A role's args come first; the command line's go after them. For a
    // plain command, the role's args are the command when none is given.
    let mut command = settings.args.clone().unwrap_or_default();
    if harness == Harness::Generic && !request.command.is_empty() {
        command.clear();
    }
    command.extend(request.command.iter().cloned());
    let mut env = request.env.clone();
    env.extend(settings.env.clone().unwrap_or_default());
    let task = if request.task.is_empty() { settings.task.clone().unwrap_or_default() } else { request.task.clone() };
    // A child of an agent tells it how it ended unless it is told not to;
    // a child of /root tells nobody (a person has events -f and wait).
    let parent_is_agent = address.parent().is_some_and(|p| !p.is_root());
    let notify = settings.notify.unwrap_or(crate::model::notify::Notify::default_for(parent_is_agent));
    // Without HOME in the spawning environment (cron, systemd), the
    // user's own home from the password database.
    let home = request
        .env
        .get("HOME")
        .map(PathBuf::from)
        .or_else(|| nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|user| user.dir));
    let listed = settings.sandbox_deny_read.clone();
    let listed = listed.unwrap_or_else(|| sandbox::DEFAULT_DENY_READ.map(String::from).to_vec());
    let (mut deny_read, mut deny_unplaced) = (Vec::new(), Vec::new());
    for entry in listed {
        match sandbox::expand_home(&entry, home.as_deref()) {
            Some(path) => deny_read.push(path),
            None => deny_unplaced.push(entry),
        }
    }
    Ok(Resolved {
        harness,
        notify,
        model: settings.model.clone(),
        task,
        command,
        env,
        budget: settings.budget.unwrap_or_default(),
        probes: settings.probes(),
        restart: settings.restart.unwrap_or_default().resolve(),
        grace_secs: request.grace_secs.or(config.supervisor.grace.map(|g| g.as_secs_f64())),
        sandbox: settings.sandbox,
        network: settings.network,
        limits: sandbox::Limits {
            max_memory: settings.max_memory,
            max_processes: settings.max_processes,
            max_open_files: settings.max_open_files,
        },
        deny_read,
        deny_unplaced,
        fallback: settings.sandbox_fallback.unwrap_or_default(),
        kernel: None,
        enforced: None,
        reasoning_effort: settings.reasoning_effort.clone(),
        meter: settings.meter.unwrap_or(match crate::proxy::plan::proxy_by_default(harness) {
            true => crate::model::budget::Meter::Proxy,
            false => crate::model::budget::Meter::Stream,
        }),
        metering: None,
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
                    .or_else(|| worktree::current_branch(&daemon.state.repo_root)),
                strategy: merge.strategy.unwrap_or_default(),
                gate: merge.gate.clone(),
            }
        },
    })
}

/// `--fork-session`: the child starts from a copy of its parent's Claude
/// Code session (see `Harness::fork_session`).
fn fork_session(daemon: &Daemon, parent: &Address, address: &Address, resolved: &mut Resolved) -> Result<()> {
    let refuse = |why: &str| Error::new(ErrorKind::Refused, format!("--fork-session for {address}: {why}"));
    if resolved.harness != Harness::Claude {
        return Err(refuse("only Claude Code sessions can be forked (use --harness claude)"));
    }
    let record = daemon.record(parent).ok_or_else(|| refuse("its parent is not an agent"))?;
    let session = match (record.harness == resolved.harness, record.session_id) {
        (true, Some(session)) => session,
        _ => return Err(refuse(&format!("{parent} is not a Claude Code agent with a session yet"))),
    };
    let worktree = daemon.state.worktrees.join(address.flat());
    // A sandboxed parent keeps its sessions in its private state folder.
    let parent_state = daemon.state.agent(record.id).dir.join("home");
    if parent_state.is_dir() {
        resolved.env.insert("CLAUDE_CONFIG_DIR".into(), parent_state.display().to_string());
    }
    let args = resolved.harness.fork_session(&resolved.env, &session, &worktree).map_err(|why| refuse(&why))?;
    resolved.command.extend(args);
    Ok(())
}

/// A child gets its parent's sandbox, network and limits unless it asks
/// for its own, and may never ask for more than its parent has; it may
/// read no path its parent may not.
fn inherit_sandbox(daemon: &Daemon, parent: &Address, address: &Address, resolved: &mut Resolved) -> Result<()> {
    let Some(parent_record) = daemon.record(parent) else { return Ok(()) };
    let refuse = |why: String| Error::new(ErrorKind::Refused, format!("spawn of {address} refused: {why}"));
    if let Some(parent_sandbox) = parent_record.sandbox {
        match resolved.sandbox {
            None => resolved.sandbox = Some(parent_sandbox),
            Some(wanted) if wanted > parent_sandbox => {
                return Err(refuse(format!(
                    "it asks for a {} sandbox but its parent {parent} is {}",
                    sandbox::sandbox_word(wanted),
                    sandbox::sandbox_word(parent_sandbox)
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(parent_network) = parent_record.network {
        match resolved.network {
            None => resolved.network = Some(parent_network),
            Some(wanted) if wanted > parent_network => {
                return Err(refuse(format!(
                    "it asks for network {} but its parent {parent} has network {}",
                    wanted.as_str(),
                    parent_network.as_str()
                )));
            }
            Some(_) => {}
        }
    }
    resolved.limits =
        resolved.limits.within(&parent_record.limits).map_err(|why| refuse(format!("{why} ({parent})")))?;
    if let Some(enforced) = &parent_record.enforced {
        for path in &enforced.deny_read {
            if !resolved.deny_read.contains(path) {
                resolved.deny_read.push(path.clone());
            }
        }
        // Below a sandboxed agent, what cannot be enforced is refused,
        // whatever the child's own fallback says.
        if enforced.restricts() {
            resolved.fallback = sandbox::Fallback::Refuse;
        }
    }
    Ok(())
}

/// Arguments for the CLI that would lift its own sandbox above corral's
/// are refused, named.
fn refuse_widening_args(address: &Address, resolved: &Resolved) -> Result<()> {
    let Some(mode) = resolved.sandbox else { return Ok(()) };
    match resolved.harness.widening_arg(mode, &resolved.command) {
        Some(arg) => Err(Error::new(
            ErrorKind::Refused,
            format!(
                "spawn of {address} refused: `{arg}` would lift {}'s own sandbox, and corral runs it under {}",
                resolved.harness,
                sandbox::sandbox_word(mode)
            ),
        )),
        None => Ok(()),
    }
}

/// What the kernel will be made to enforce for this spawn, or why it is
/// refused (fail closed: see `sys::sandbox::resolve`). A child's TCP ports
/// stay within its parent's.
fn resolve_sandbox(
    daemon: &Daemon,
    parent: &Address,
    address: &Address,
    request: &SpawnRequest,
    resolved: &mut Resolved,
) -> Result<()> {
    let asked = resolved.sandbox.is_some() || resolved.network.is_some() || !resolved.limits.is_empty();
    if !asked {
        return Ok(());
    }
    let refuse = |why: String| Error::new(ErrorKind::Refused, format!("spawn of {address} refused: {why}"));
    // A deny list entry that cannot be placed would be left out, and what
    // it names readable: fail closed.
    if resolved.sandbox.is_some_and(|mode| mode < crate::config::Sandbox::Full) {
        if let Some(entry) = resolved.deny_unplaced.first() {
            return Err(refuse(format!(
                "sandbox_deny_read entry {entry:?} names no absolute path (a `~` needs HOME, and neither the \
                 environment nor the password database gives one); write it absolute"
            )));
        }
    }
    let proxy_port = match request.env.get(sandbox::PROXY_PORT_VARIABLE) {
        Some(text) => Some(
            text.trim()
                .parse::<u16>()
                .map_err(|_| refuse(format!("{}={text:?} is not a port", sandbox::PROXY_PORT_VARIABLE)))?,
        ),
        None => None,
    };
    let wanted = sandbox::Wanted {
        mode: resolved.sandbox,
        network: resolved.network,
        limits: resolved.limits,
        deny_read: resolved.deny_read.clone(),
        fallback: resolved.fallback,
        proxy_port,
    };
    let kernel = sandbox::Kernel::probe(&request.env, &resolved.limits);
    let enforced = sandbox::resolve(&wanted, &kernel).map_err(refuse)?;
    let parent_ports =
        daemon.record(parent).and_then(|p| p.enforced).filter(|e| e.network == Some(sandbox::Network::Model));
    if let Some(parent_enforced) = parent_ports {
        if let Some(port) = enforced.connect_ports.iter().find(|p| !parent_enforced.connect_ports.contains(p)) {
            return Err(refuse(format!("it may connect to port {port}, which its parent {parent} may not")));
        }
    }
    resolved.kernel = Some(kernel);
    resolved.enforced = Some(enforced);
    Ok(())
}

/// The sandbox's plan for the agent, with its private folders (`TMPDIR`,
/// its CLI's state folder) made and named in `env`; `None` when nothing is
/// enforced.
fn sandbox_plan(
    daemon: &Daemon,
    agent_dir: &AgentDir,
    resolved: &Resolved,
    record: &AgentRecord,
    env: &mut BTreeMap<String, String>,
) -> std::result::Result<Option<sandbox::Plan>, String> {
    let (Some(enforced), Some(kernel)) = (&resolved.enforced, &resolved.kernel) else { return Ok(None) };
    let git_common = daemon.state.dir.parent().map(Path::to_path_buf).unwrap_or_else(|| daemon.state.dir.clone());
    let paths = if sandbox::restricts_files(enforced.filesystem) {
        let (tmp, state) = sandbox::make_private_folders(&agent_dir.dir)
            .map_err(|e| format!("cannot make the private folders in {}: {e}", agent_dir.dir.display()))?;
        env.insert("TMPDIR".into(), tmp.display().to_string());
        for (name, value) in resolved.harness.private_state(env, &state, &record.worktree)? {
            env.insert(name, value);
        }
        let git_admin = sandbox::worktree_admin_dir(&record.worktree)
            .map_err(|e| format!("cannot find git's folder of the worktree {}: {e}", record.worktree.display()))?;
        let paths = sandbox::AgentPaths {
            worktree: record.worktree.clone(),
            git_common,
            git_admin,
            branch: record.branch.clone(),
            tmp,
            state,
        };
        for folder in paths.ref_folders() {
            std::fs::create_dir_all(&folder).map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        }
        Some(paths)
    } else {
        None
    };
    let cgroup_name = format!("corral-{}-{}", sandbox::short_hash(&daemon.state.dir), record.id);
    let plan = sandbox::Plan::for_agent(enforced, paths.as_ref(), kernel, &cgroup_name);
    Ok((!plan.is_empty()).then_some(plan))
}

/// Puts a proxy-metered agent behind its proxy: a token of its own in
/// place of the real keys (which the daemon holds for its monitor), and
/// its CLI pointed at the proxy.
fn plan_metering(resolved: &mut Resolved) -> Result<()> {
    if resolved.meter != crate::model::budget::Meter::Proxy {
        return Ok(());
    }
    let token =
        crate::proxy::Token::random().map_err(|e| Error::other(format!("cannot make the agent's proxy token: {e}")))?;
    let opencode = match resolved.harness {
        corral_harness::Harness::Opencode => opencode_sources(&resolved.env)?,
        _ => Vec::new(),
    };
    if resolved.harness == corral_harness::Harness::Gemini {
        gemini_takes_a_base_url(&resolved.env)?;
    }
    let model = resolved.model.as_deref();
    let plan =
        crate::proxy::plan::plan(resolved.harness, &mut resolved.env, &resolved.command, model, &opencode, &token.0)
            .map_err(|why| Error::new(ErrorKind::BadConfig, why))?;
    resolved.command.extend(plan.extra_args.iter().cloned());
    resolved.metering = Some(plan);
    Ok(())
}

/// Gemini CLI 0.61 pointed at a base URL picks its `gateway` auth, which
/// it then refuses ("Invalid auth method selected", exit 41), unless its
/// settings pick API-key auth (`security.auth.selectedType:
/// "gemini-api-key"`) or external auth (`security.auth.useExternal`):
/// docs/agents/gemini-cli.md §2. Refused at spawn when the settings (under
/// `GEMINI_CLI_HOME`, else `HOME`) say neither, rather than failing in the
/// agent's first second.
fn gemini_takes_a_base_url(env: &BTreeMap<String, String>) -> Result<()> {
    let home = ["GEMINI_CLI_HOME", "HOME"].iter().find_map(|name| env.get(*name).filter(|v| !v.is_empty()));
    let settings = home.map(|home| Path::new(home).join(".gemini/settings.json"));
    let auth = settings
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|value| value.pointer("/security/auth").cloned());
    let api_key = auth.as_ref().and_then(|a| a.get("selectedType")).and_then(|t| t.as_str()) == Some("gemini-api-key");
    let external = auth.as_ref().and_then(|a| a.get("useExternal")).and_then(|u| u.as_bool()) == Some(true);
    if api_key || external {
        return Ok(());
    }
    let file = settings.map_or_else(|| "~/.gemini/settings.json".to_string(), |p| p.display().to_string());
    Err(Error::new(
        ErrorKind::BadConfig,
        format!(
            "Gemini CLI pointed at corral's metering proxy needs API-key auth in its settings: add \
             {{\"security\": {{\"auth\": {{\"selectedType\": \"gemini-api-key\"}}}}}} to {file}, or spawn it with \
             --meter stream"
        ),
    ))
}

/// opencode's configuration files, as opencode reads them before the
/// project's (docs/agents/opencode-cli.md): the global `config.json`,
/// `opencode.json`, `opencode.jsonc` under `$XDG_CONFIG_HOME/opencode`
/// (else `~/.config/opencode`), then `OPENCODE_CONFIG`'s file. A file that
/// cannot be read as JSON is an error: corral would not know where the
/// agent's calls go.
fn opencode_sources(env: &BTreeMap<String, String>) -> Result<crate::proxy::plan::OpencodeSources> {
    let config_home = env
        .get("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|home| Path::new(home).join(".config")));
    let mut files: Vec<PathBuf> = match config_home {
        Some(dir) => {
            ["config.json", "opencode.json", "opencode.jsonc"].iter().map(|f| dir.join("opencode").join(f)).collect()
        }
        None => Vec::new(),
    };
    files.extend(env.get("OPENCODE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from));
    let mut sources = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::new(ErrorKind::BadConfig, format!("cannot read {}: {e}", file.display()))),
        };
        let value = serde_json::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::BadConfig,
                format!("cannot read opencode's {} as JSON ({e}); spawn it with --meter stream", file.display()),
            )
        })?;
        sources.push(value);
    }
    Ok(sources)
}

/// The harness's command line for these settings (the harness applies
/// the sandbox and the reasoning effort as its CLI can).
fn build_launch(resolved: &Resolved) -> Result<Launch> {
    let program = resolved.harness.program(&resolved.env);
    let options = corral_harness::launch::Options {
        model: resolved.model.as_deref(),
        sandbox: resolved.sandbox,
        reasoning_effort: resolved.reasoning_effort.as_deref(),
        confined: resolved.enforced.as_ref().is_some_and(|e| sandbox::restricts_files(e.filesystem)),
    };
    resolved
        .harness
        .launch(&program, &resolved.task, &options, &resolved.command)
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
    daemon: &Arc<Daemon>,
    agent_dir: &AgentDir,
    resolved: &Resolved,
    launch: &Launch,
    record: &AgentRecord,
) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let unwritable = |path: &Path, e| Error::state_write(&daemon.state.dir, path, e, "nothing was started");
    // Private whatever the umask (the state folder is too: this is its
    // second wall), as is all the monitor writes in it.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&agent_dir.dir)
        .map_err(|e| unwritable(&agent_dir.dir, e))?;
    let mut env = resolved.env.clone();
    env.retain(|k, _| {
        !k.starts_with("CORRAL_")
            || k == "CORRAL_WORKTREE_ROOT"
            || k == "CORRAL_TEST_ID"
            || (resolved.metering.is_some() && k == crate::proxy::plan::CODEX_TOKEN_VARIABLE)
    });
    let plan = sandbox_plan(daemon, agent_dir, resolved, record, &mut env)
        .map_err(|why| Error::other(format!("the sandbox of {} cannot be prepared: {why}", record.address)))?;
    env.insert("CORRAL_ADDRESS".into(), record.address.to_string());
    env.insert("CORRAL_PARENT".into(), record.parent.to_string());
    env.insert("CORRAL_TASK_ID".into(), record.task_id.clone());
    env.insert("CORRAL_TASK".into(), record.task.clone());
    env.insert("CORRAL_SOCKET".into(), daemon.state.socket().display().to_string());
    env.insert("CORRAL_BRANCH".into(), record.branch.clone());
    // The agent runs in its worktree: a PWD left from the spawner's shell
    // would point elsewhere, and CLIs that trust it (opencode 1.18 resolves
    // relative paths against it) would write outside the worktree.
    env.insert("PWD".into(), record.worktree.display().to_string());
    env.remove("OLDPWD");
    env.entry("TERM".into()).or_insert_with(|| "xterm-256color".into());
    let spec = MonitorSpec {
        command: launch.argv.clone(),
        cwd: record.worktree.clone(),
        env,
        raw: launch.raw_pty,
        input: launch.input.into(),
        first_input: launch.first_input.clone(),
        restart: resolved.restart,
        grace_secs: resolved.grace_secs,
        rows: 50,
        cols: 160,
        sandbox: plan,
        meter: resolved.metering.as_ref().map(|metering| metering.spec.clone()),
    };
    let spec_bytes = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(agent_dir.spec())
        .and_then(|mut f| std::io::Write::write_all(&mut f, &spec_bytes))
        .map_err(|e| unwritable(&agent_dir.spec(), e))?;
    Ok(())
}

/// A parent agent that will hear from this child is told before the
/// spawn answers, so it cannot end its turn and go before the child
/// reports (see `agent::hold_for_children`). A parent that does not
/// answer within a second or two is not waited for.
async fn tell_parent(daemon: &Arc<Daemon>, child: &AgentRecord) {
    if child.parent.is_root() || !child.notify.is_some_and(crate::model::notify::Notify::on_completion) {
        return;
    }
    let (ack, acked) = tokio::sync::oneshot::channel();
    if daemon.agents.control(&child.parent, super::agent::Control::Child { ack }).is_ok() {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), acked).await;
    }
}
