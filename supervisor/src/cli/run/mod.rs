//! `corral run FILE` and `corral runs`: batches of agents for scripts and
//! cron, with a lock, a report and an exit code.
//!
//! A run is made of ordinary agents, so every other command reads it
//! (`ps`, `view`, `logs`, `events --agent /root/<run id>`, `stop`):
//!
//! ```text
//! corral run nightly.toml          the client: checks the file, makes the run id and record,
//!   └─ /root/nightly-20261201T030000Z    the driver, a supervised agent (`corral run-driver`):
//!        ├─ /root/nightly-…/deps         holds the lock, spawns in dependency order, waits,
//!        └─ /root/nightly-…/docs         skips what cannot run, writes the report
//! ```
//!
//! The driver is an agent because that gives the run what agents have
//! already: it outlives its client and the daemon (its monitor keeps it;
//! its requests reconnect), its budget covers every agent of the run (the
//! run's `budget`, and its `timeout` as the driver's wall budget, which
//! stops the whole subtree), and `corral stop` of its address stops the
//! run. A driver takes no `max_threads` slot: it does no work of its own.
//!
//! | module | what |
//! |---|---|
//! | `file` | the run file: format, checks, variables, order (pure) |
//! | `record` | `<state>/runs/<id>.json` (written whole, atomically) and the lock `<state>/runs/<name>.lock` |
//! | `drive` | the driver |
//! | `follow` | the client's side: progress, signals, the report |
//! | `report` | the report and the exit code (pure) |
//!
//! Owns: the run file, the run records and locks, and the exit codes of a
//! run (README, "Exit codes"). Never does: change an agent itself: every
//! change is a request to the daemon, as `corral spawn`, `wait`, `stop`
//! and `assign` make them.

pub mod drive;
pub mod file;
pub mod follow;
pub mod record;
pub mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::cli::client::Client;
use crate::config::{AgentConfig, Config, MergeConfig, MergePolicy, RestartPolicy, Sandbox};
use crate::model::address::Address;
use crate::model::error::{Error, ErrorKind, Result};
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest};
use file::{Overlap, RunFile};
use follow::{err, out, Signals};
use record::{RunRecord, RunState, Runs};

pub use report::RUN_SKIPPED;

/// The hidden subcommand the driver runs as.
pub const DRIVER_COMMAND: &str = crate::model::lifecycle::RUN_DRIVER_COMMAND;

/// The driver's stop grace, at least: long enough to stop its agents (each
/// with its own grace) and write the report. An agent with a longer grace
/// lengthens it ([`driver_grace`]).
const DRIVER_GRACE_SECS: f64 = 60.0;

/// What a stop of the driver waits beyond its agents' longest grace: the
/// daemon's own allowance for a stop (30 s), and the report.
const DRIVER_GRACE_MARGIN_SECS: f64 = 45.0;

/// The driver's grace for `record`'s run: its agents' longest grace (the
/// run file's, else `[supervisor] grace`, else the daemon's default) and
/// [`DRIVER_GRACE_MARGIN_SECS`],
/// and never under [`DRIVER_GRACE_SECS`]. A shorter one would have the
/// driver killed before its agents are stopped and its report written.
fn driver_grace(config: &Config, record: &RunRecord) -> f64 {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    let fallback = secs(config.supervisor.grace).unwrap_or(crate::model::lifecycle::DEFAULT_GRACE_SECS);
    let longest = record.plan.agents.iter().map(|agent| agent.grace_secs.unwrap_or(fallback)).fold(0.0, f64::max);
    DRIVER_GRACE_SECS.max(longest + DRIVER_GRACE_MARGIN_SECS)
}

/// How long a request keeps trying to reach a daemon that went away
/// (each try starts one) before it gives up.
const DAEMON_PATIENCE: Duration = Duration::from_secs(120);

/// `corral run`'s arguments.
pub struct RunArgs {
    pub file: Option<PathBuf>,
    pub resume: Option<String>,
    pub dry_run: bool,
    pub vars: Vec<String>,
    pub json: bool,
}

/// `corral run FILE` (or `--resume ID`): returns the run's exit code.
pub fn run(start: &Path, args: RunArgs) -> Result<i32> {
    if let Some(id) = &args.resume {
        return resume(start, id, args.json);
    }
    let Some(path) = args.file else {
        return Err(Error::other("corral run: give a run file, or --resume ID"));
    };
    let path = if path.is_absolute() { path } else { start.join(path) };
    let mut vars = BTreeMap::new();
    for text in &args.vars {
        match file::parse_var(text) {
            Ok((key, value)) => {
                vars.insert(key, value);
            }
            Err(why) => {
                err(&format!("corral: {why}"));
                return Ok(2);
            }
        }
    }
    let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read the run file", &path, e))?;
    let bad = |e: crate::config::ConfigError| Error::new(ErrorKind::BadConfig, e.to_string());
    let text = String::from_utf8(bytes).map_err(|e| bad(not_utf8(&path, e.as_bytes(), e.utf8_error())))?;
    let state = StateDir::discover(start)?;
    let config = Config::load(&state.repo_root).map_err(bad)?;
    let names: BTreeSet<String> = vars.keys().cloned().collect();
    let plan = RunFile::parse(&text, &path, &config, &names).map_err(bad)?;
    let caller = caller();
    if let Some(max) = config.supervisor.max_depth.filter(|max| caller.depth() + 2 > *max as usize) {
        return Err(Error::new(
            ErrorKind::BadConfig,
            format!(
                "{}: a run's agents live two levels below {caller} ({caller}/<run id>/<agent>), but [supervisor] max_depth is {max}",
                path.display()
            ),
        ));
    }
    let now = Utc::now();
    let stamp = now.format("%Y%m%dT%H%M%SZ").to_string();
    if args.dry_run {
        let id = format!("{}-{stamp}", plan.name);
        out(&dry_run(&plan.expand(&values(&vars, &id, &plan.name, now)), &caller, &id));
        return Ok(0);
    }

    state.create()?;
    let runs = Runs::new(&state);
    let signals = Signals::install()?;
    // The overlap, checked before anything starts (the driver checks again
    // and holds the lock for its life).
    // A run whose driver was killed holds no lock while its agents work on.
    let still_going = || -> Result<bool> {
        Ok(runs.try_lock(&plan.name, Overlap::Skip)?.is_none()
            || drive::interrupted_and_still_going(&state, &runs, &plan.name, None)?.is_some())
    };
    match plan.overlap {
        Overlap::Skip if still_going()? => {
            let record = runs.create_record(
                |id| {
                    let mut record = new_record(id, &path, &caller, now, &vars, &plan);
                    record.state = RunState::Skipped;
                    record.code = Some(RUN_SKIPPED);
                    record.ended = Some(now);
                    record
                },
                &plan.name,
                &stamp,
            )?;
            let going = runs.all().into_iter().rev().find(|r| r.plan.name == plan.name && !r.state.is_final());
            let going = going.map_or(String::new(), |r| format!(" ({})", r.run));
            err(&format!("corral run: skipped: a run named {} is still going{going}", plan.name));
            let report = report::build(&record, &[], now);
            follow::print_report(&report, args.json);
            return Ok(RUN_SKIPPED);
        }
        Overlap::Wait if runs.try_lock(&plan.name, Overlap::Wait)?.is_none() => {
            err(&format!("corral run: a run named {} is still going; this one starts when it ends", plan.name));
            if runs.lock(&plan.name, Overlap::Wait, || signals.stop_requested())?.is_none() {
                err("corral run: stopped while waiting; nothing was started");
                return Ok(report::STOPPED);
            }
        }
        _ => {}
    }
    let record = runs.create_record(|id| new_record(id, &path, &caller, now, &vars, &plan), &plan.name, &stamp)?;
    if let Err(err) = spawn_driver(&state, &config, &record) {
        // Nothing started: the run leaves no record.
        let _ = std::fs::remove_file(runs.path(&record.run));
        return Err(err);
    }
    follow::follow(&state, &runs, &record.run, args.json, &signals)
}

/// A run file that is not UTF-8 (TOML is), at the line and column of its
/// first bad byte.
fn not_utf8(path: &Path, bytes: &[u8], err: std::str::Utf8Error) -> crate::config::ConfigError {
    let good = &bytes[..err.valid_up_to()];
    let line_start = good.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1);
    crate::config::ConfigError::Invalid {
        path: path.to_owned(),
        line: good.iter().filter(|&&b| b == b'\n').count() + 1,
        column: good.len() - line_start + 1,
        key: String::new(),
        message: format!("not UTF-8 text (byte {:#04x}); a run file is TOML, which is UTF-8", bytes[err.valid_up_to()]),
    }
}

/// The values of the variables of run `id`: the built-ins, then `--var`s.
fn values(vars: &BTreeMap<String, String>, id: &str, name: &str, now: DateTime<Utc>) -> BTreeMap<String, String> {
    let mut values = vars.clone();
    values.insert("run".into(), id.into());
    values.insert("name".into(), name.into());
    values.insert("date".into(), now.format("%Y-%m-%d").to_string());
    values.insert("time".into(), now.format("%H:%M:%S").to_string());
    values.insert("timestamp".into(), now.format("%Y%m%dT%H%M%SZ").to_string());
    values
}

fn new_record(
    id: &str,
    path: &Path,
    caller: &Address,
    now: DateTime<Utc>,
    vars: &BTreeMap<String, String>,
    plan: &RunFile,
) -> RunRecord {
    let values = values(vars, id, &plan.name, now);
    RunRecord {
        v: record::RUN_VERSION,
        run: id.to_owned(),
        file: path.to_owned(),
        address: caller.child(id).map(|a| a.to_string()).unwrap_or_else(|_| format!("{caller}/{id}")),
        started: now,
        ended: None,
        state: RunState::Starting,
        code: None,
        plan: plan.expand(&values),
        vars: values,
        not_run: BTreeMap::new(),
        report: None,
    }
}

/// Spawns the run's driver at `<caller>/<run id>`: this very binary, with
/// the run's budget and timeout, merging nothing, never restarted.
fn spawn_driver(state: &StateDir, config: &Config, record: &RunRecord) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| Error::other(format!("cannot find the corral binary: {e}")))?;
    let address = Address::parse(&record.address)?;
    let parent = address.parent().unwrap_or_else(Address::root);
    let settings = AgentConfig {
        harness: Some(corral_harness::Harness::Generic),
        budget: record.plan.budget,
        merge: Some(MergeConfig { policy: Some(MergePolicy::Never), ..MergeConfig::default() }),
        restart: Some(crate::config::RestartPartial { policy: Some(RestartPolicy::Never), ..Default::default() }),
        // A run at /root writes what its agents' own settings let them;
        // nested in an agent, it inherits that agent's sandbox.
        sandbox: parent.is_root().then_some(Sandbox::Full),
        ..AgentConfig::default()
    };
    let request = SpawnRequest {
        name: address.name().to_owned(),
        parent: Some(parent.to_string()),
        task: format!("run {}", record.file.display()),
        role: None,
        settings,
        fork_session: false,
        command: vec![exe.display().to_string(), DRIVER_COMMAND.into(), "--id".into(), record.run.clone()],
        grace_secs: Some(driver_grace(config, record)),
        base: None,
        env: crate::cli::client::environment(),
    };
    match ask(state, &Request::Spawn(Box::new(request))) {
        Ok(Response::Spawned(_)) => Ok(()),
        // A spawn retried across a daemon restart (see `ask`) whose first
        // try went through: the agent at the address is this run's driver.
        Err(err) if err.kind == ErrorKind::Duplicate && drives(state, &address, &record.run)? => Ok(()),
        Ok(other) => Err(Error::other(format!("the daemon answered a spawn with {other:?}"))),
        Err(err) => Err(err),
    }
}

/// Whether the agent at `address` is the driver of run `id` (its command
/// is `corral run-driver --id ID`; the id is this run's alone).
fn drives(state: &StateDir, address: &Address, id: &str) -> Result<bool> {
    match ask(state, &Request::Info { address: address.to_string() })? {
        Response::Info { agent, .. } => Ok(agent.command.windows(3).any(|words| words == [DRIVER_COMMAND, "--id", id])),
        _ => Ok(false),
    }
}

/// `corral run --resume ID`: follows a run whose driver still runs; gives
/// a driver that ended before its run did its next task (the same command
/// in the same worktree), which waits for the agents already spawned and
/// spawns the rest; prints the report of a run that has ended.
fn resume(start: &Path, id: &str, json: bool) -> Result<i32> {
    let state = StateDir::discover(start)?;
    let runs = Runs::new(&state);
    let record = runs.load(id)?;
    let driver = Address::parse(&record.address)?;
    let agents = drive::run_agents(&state, &driver)?;
    let driver_record = agents.iter().find(|a| a.address == driver);
    if record.state.is_final() && driver_record.is_none_or(|d| d.state.is_terminal()) {
        err(&format!("corral run: {id} has ended ({}); nothing to resume", record.state.as_str()));
        let report = report::build(&record, &agents, Utc::now());
        follow::print_report(&report, json);
        return Ok(report.code);
    }
    let Some(driver_record) = driver_record else {
        return Err(Error::new(ErrorKind::UnknownAddress, format!("run {id} has no driver at {driver}")));
    };
    let signals = Signals::install()?;
    if driver_record.state.is_terminal() {
        let overlap = record.overlap();
        if overlap != Overlap::Allow && runs.try_lock(&record.plan.name, overlap)?.is_none() {
            if overlap == Overlap::Skip {
                err(&format!("corral run: a run named {} is still going; resume {id} once it ends", record.plan.name));
                return Ok(RUN_SKIPPED);
            }
            err(&format!("corral run: a run named {} is still going; {id} resumes when it ends", record.plan.name));
            if runs.lock(&record.plan.name, overlap, || signals.stop_requested())?.is_none() {
                return Ok(report::STOPPED);
            }
        }
        let request = Request::Assign { address: driver.to_string(), task: "resume".into(), queue: false };
        ask(&state, &request)?;
        err(&format!("corral run: resuming {id}"));
    }
    follow::follow(&state, &runs, id, json, &signals)
}

/// What a dry run prints: the run, then each level of agents.
fn dry_run(plan: &RunFile, caller: &Address, id: &str) -> String {
    let mut out = format!("run {id} (dry run: nothing is started)\n");
    out.push_str(&format!("  overlap {}", plan.overlap.as_str()));
    if let Some(timeout) = plan.timeout {
        out.push_str(&format!(", timeout {}", crate::model::duration::format_duration(timeout)));
    }
    if let Some(budget) = &plan.budget {
        if let Some(tokens) = budget.tokens {
            out.push_str(&format!(", tokens {tokens}"));
        }
        if let Some(cost) = budget.cost {
            out.push_str(&format!(", cost ${cost:.2}"));
        }
    }
    out.push('\n');
    for (level, agents) in plan.levels().iter().enumerate() {
        out.push_str(&format!("step {}:\n", level + 1));
        for agent in agents {
            out.push_str(&format!("  {caller}/{id}/{}", agent.name));
            if let Some(role) = &agent.role {
                out.push_str(&format!("  role {role}"));
            }
            if let Some(harness) = agent.settings.harness {
                out.push_str(&format!("  harness {}", harness.as_str()));
            }
            if !agent.after.is_empty() {
                out.push_str(&format!("  after {}", agent.after.join(", ")));
            }
            if let Some(policy) = agent.settings.merge.as_ref().and_then(|m| m.policy) {
                let word = serde_json::to_value(policy).ok().and_then(|v| v.as_str().map(String::from));
                out.push_str(&format!("  merge {}", word.unwrap_or_default()));
            }
            out.push('\n');
            if !agent.task.is_empty() {
                out.push_str(&format!("      task: {}\n", agent.task));
            }
            if !agent.command.is_empty() {
                out.push_str(&format!("      command: {}\n", agent.command.join(" ")));
            }
        }
    }
    out
}

/// `corral runs`: every run, oldest first: id, file, started, state, spend.
pub fn list(state: &StateDir, json: bool) -> Result<i32> {
    let records = Runs::new(state).all();
    let agents = match records.is_empty() {
        true => Vec::new(),
        false => crate::cli::client::list_with(|request| ask(state, request), true, false, None)?.0,
    };
    let mut rows = Vec::new();
    for record in &records {
        let Ok(driver) = Address::parse(&record.address) else { continue };
        let mine: Vec<_> = agents.iter().filter(|a| a.address.is_within(&driver)).cloned().collect();
        let report = report::build(record, &mine, Utc::now());
        rows.push(serde_json::json!({
            "run": record.run,
            "name": record.plan.name,
            "file": record.file,
            "address": record.address,
            "started": record.started,
            "ended": report.ended,
            "state": report.state.as_str(),
            "code": report.state.is_final().then_some(report.code),
            "agents": report.totals.agents,
            "tokens": report.totals.tokens,
            "cost": report.totals.cost,
        }));
    }
    if json {
        out(&format!("{}\n", serde_json::to_string_pretty(&rows).expect("serializes")));
        return Ok(0);
    }
    if rows.is_empty() {
        out("(no runs)\n");
        return Ok(0);
    }
    let header = ["RUN", "FILE", "STARTED", "STATE", "EXIT", "AGENTS", "TOKENS", "COST"];
    let mut table = vec![header.map(String::from)];
    for (row, record) in rows.iter().zip(&records) {
        table.push([
            record.run.clone(),
            record.file.display().to_string(),
            record.started.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string(),
            row["state"].as_str().unwrap_or_default().to_owned(),
            row["code"].as_i64().map_or("-".into(), |c| c.to_string()),
            row["agents"].to_string(),
            crate::cli::commands::human_count(row["tokens"].as_u64().unwrap_or(0)),
            format!("${:.4}", row["cost"].as_f64().unwrap_or(0.0)),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in &table {
        let line: String = row.iter().enumerate().map(|(i, c)| format!("{c:<w$}  ", w = widths[i])).collect();
        out(&format!("{}\n", line.trim_end()));
    }
    Ok(0)
}

/// Sends one request; while the daemon cannot be reached (it was killed,
/// say), connects again (which starts a new one) for up to
/// [`DAEMON_PATIENCE`], so a run goes on across a daemon restart.
pub(crate) fn ask(state: &StateDir, request: &Request) -> Result<Response> {
    let mut failing_since: Option<Instant> = None;
    loop {
        match Client::connect(state).and_then(|mut client| client.request(request)) {
            Err(err) if err.kind == ErrorKind::DaemonUnavailable => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() > DAEMON_PATIENCE {
                    return Err(err);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// The caller's own address: `/root` for a person or a script, else the
/// agent's (`CORRAL_ADDRESS`).
pub(crate) fn caller() -> Address {
    std::env::var("CORRAL_ADDRESS").ok().and_then(|a| Address::parse(&a).ok()).unwrap_or_else(Address::root)
}
