//! What each `corral` command does, on the client side.
//!
//! Commands resolve addresses relative to the caller: a person or script
//! is `/root`; an agent started by corral is its own address
//! (`CORRAL_ADDRESS`), so `corral spawn helper` inside `/root/lead` makes
//! `/root/lead/helper`. Errors print one line and exit with the code of
//! their kind (README, "Exit codes").

use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;

use crate::cli::args::{Cli, Command};
use crate::cli::client::Client;
use crate::model::address::{validate_name, Address};
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::lifecycle::{AgentRecord, MergeState, WAIT_TIMED_OUT};
use crate::sys::output::clean_line;
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest};

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("corral: {}", err.message);
            err.kind.exit_code()
        }
    }
}

/// Prints a command-line error and gives its exit code: clap's own (2
/// for a bad command line, 0 for `--help`), except that a duration corral
/// cannot use exits 13 like any other bad number (README, "Exit codes").
pub fn parse_error(err: clap::Error) -> i32 {
    use std::error::Error as _;
    let bad_duration = err.kind() == clap::error::ErrorKind::ValueValidation
        && err.source().is_some_and(|source| source.is::<crate::model::duration::DurationError>());
    let _ = err.print();
    if bad_duration {
        ErrorKind::BadBudget.exit_code()
    } else {
        err.exit_code()
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    let start = match &cli.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().map_err(|e| Error::other(format!("cannot read the current folder: {e}")))?,
    };
    let state = || StateDir::discover(&start);
    match cli.command {
        Command::Monitor { dir } => {
            crate::monitor::run(&dir).map_err(|e| Error::other(format!("monitor: {e:#}")))?;
            Ok(0)
        }
        Command::FakeAgent { script } => Ok(crate::cli::fake_agent::run(&script)),
        Command::Demo { keep } => crate::cli::demo::run(keep),
        Command::Doctor { json } => crate::cli::doctor::run(&start, json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { command } => man(command.as_deref()),
        Command::Top => crate::cli::top::run(&state()?),
        Command::Daemon => {
            crate::daemon::run(state()?).map_err(|e| Error::other(format!("daemon: {e:#}")))?;
            Ok(0)
        }
        Command::ExecAgent { stdin, sandbox, command } => {
            Ok(crate::monitor::exec_agent(stdin.as_deref(), sandbox.as_deref(), &command))
        }
        Command::MockLlm { script, port, record } => {
            let script = corral_harness::mock_llm::Script::load(&script).map_err(|e| Error::other(e.to_string()))?;
            corral_harness::mock_llm::serve_blocking(script, ([127, 0, 0, 1], port).into(), record)
                .map_err(|e| Error::other(format!("mock-llm: {e}")))?;
            Ok(0)
        }
        Command::Usage { harness, file, json } => usage(&harness, &file, json),
        Command::Mcp => crate::cli::mcp::run(start),
        Command::Run { file, resume, dry_run, vars, json } => {
            crate::cli::run::run(&start, crate::cli::run::RunArgs { file, resume, dry_run, vars, json })
        }
        Command::Runs { json } => crate::cli::run::list(&state()?, json),
        Command::RunDriver { id } => crate::cli::run::drive::drive(&start, &id),
        Command::Merge { address, strategy, json } => {
            let address = Address::resolve(&address, &caller())?.to_string();
            let Response::Agent { agent } =
                Client::connect(&state()?)?.request(&Request::Merge { address, strategy })?
            else {
                return Err(unexpected());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&versioned(&agent)).expect("serializes"));
            } else {
                println!("{}", describe(&agent));
            }
            Ok(agent.merge_state.as_ref().map_or(1, |m| m.exit_code()))
        }
        Command::Assign { address, task, queue, json } => {
            let address = Address::resolve(&address, &caller())?.to_string();
            let request = Request::Assign { address, task, queue };
            let Response::Agent { agent } = Client::connect(&state()?)?.request(&request)? else {
                return Err(unexpected());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&versioned(&agent)).expect("serializes"));
            } else if agent.queued_tasks.is_empty() {
                println!("{} {}  ({})", agent.address, agent.task_id, agent.state.as_str());
            } else {
                let (id, _) = agent.queued_tasks.last().expect("not empty");
                println!("{} {id}  (queued: it runs when {} finishes its task)", agent.address, agent.task_id);
            }
            Ok(0)
        }
        Command::Diff { address } => {
            let address = Address::resolve(&address, &caller())?.to_string();
            let Response::Diff { patch } = Client::connect(&state()?)?.request(&Request::Diff { address })? else {
                return Err(unexpected());
            };
            print!("{patch}");
            Ok(0)
        }
        Command::Send { address, text, from, json } => {
            let caller = caller();
            let to = Address::resolve(&address, &caller)?.to_string();
            let from = from.unwrap_or_else(|| caller.to_string());
            let Response::Sent { message_id } =
                Client::connect(&state()?)?.request(&Request::Send { to, from, text })?
            else {
                return Err(unexpected());
            };
            if json {
                println!("{}", serde_json::json!({ "v": JSON_VERSION, "message_id": message_id }));
            } else {
                println!("{message_id}");
            }
            Ok(0)
        }
        Command::Spawn {
            name,
            task,
            parent,
            base,
            role,
            harness,
            model,
            max_tokens,
            max_output_tokens,
            max_cost,
            timeout,
            idle_timeout,
            grace,
            startup,
            readiness,
            liveness,
            restart,
            restart_limit,
            backoff,
            max_backoff,
            reset_after,
            merge,
            target,
            strategy,
            gate,
            sandbox,
            network,
            max_memory,
            max_processes,
            max_open_files,
            notify,
            fork_session,
            json,
            command,
        } => {
            let merge_given = merge.is_some() || target.is_some() || strategy.is_some() || gate.is_some();
            let merge = match merge_given {
                false => None,
                true => Some(crate::config::MergeConfig {
                    policy: merge,
                    target,
                    strategy,
                    gate: gate.map(crate::sys::gate::Gate::Shell),
                }),
            };
            // Budgets are checked here too, so a typo fails before any daemon starts.
            let limits = crate::model::budget::Budget {
                tokens: max_tokens,
                output_tokens: max_output_tokens,
                cost: max_cost,
                wall: timeout,
                idle: idle_timeout,
                warn_at: None,
            };
            limits.validate().map_err(|why| Error::new(ErrorKind::BadBudget, why))?;
            let restart_given = restart.is_some()
                || restart_limit.is_some()
                || backoff.is_some()
                || max_backoff.is_some()
                || reset_after.is_some();
            let restart = match restart_given {
                false => None,
                true => Some(crate::model::restart::RestartPartial {
                    policy: restart,
                    limit: restart_limit,
                    backoff,
                    max_backoff,
                    reset_after,
                }),
            };
            let harness = harness
                .map(|name| name.parse::<corral_harness::Harness>())
                .transpose()
                .map_err(|e| Error::new(ErrorKind::BadHarness, e.to_string()))?;
            let settings = crate::config::AgentConfig {
                harness,
                model,
                budget: (!limits.is_empty()).then_some(limits),
                startup: startup.as_deref().map(|t| parse_probe("--startup", t)).transpose()?,
                readiness: readiness.as_deref().map(|t| parse_probe("--readiness", t)).transpose()?,
                liveness: liveness.as_deref().map(|t| parse_probe("--liveness", t)).transpose()?,
                restart,
                merge,
                sandbox: sandbox.map(|sandbox| sandbox.0),
                network,
                max_memory,
                max_processes,
                max_open_files,
                notify,
                ..Default::default()
            };
            validate_name(&name)?;
            let caller = caller();
            let parent = match parent {
                Some(text) => Address::resolve(&text, &caller)?,
                None => caller,
            };
            let state = state()?;
            let env = std::env::vars().collect();
            let request = SpawnRequest {
                name,
                parent: Some(parent.to_string()),
                task,
                role,
                settings,
                fork_session,
                command,
                grace_secs: grace.map(|d| d.as_secs_f64()),
                base,
                env,
            };
            let Response::Spawned(spawned) = Client::connect(&state)?.request(&Request::Spawn(Box::new(request)))?
            else {
                return Err(unexpected());
            };
            if json {
                println!("{}", serde_json::to_string(&versioned(&spawned)).expect("serializes"));
            } else {
                let how = match spawned.pid {
                    0 => "pending: max_threads agents run already".to_string(),
                    pid => format!("pid {pid}"),
                };
                let (address, task_id, branch) = (&spawned.address, &spawned.task_id, &spawned.branch);
                println!("{address} {task_id}  ({how}, branch {branch}, worktree {})", spawned.worktree.display());
            }
            Ok(0)
        }
        Command::Ps { all, json } => {
            let Response::Agents { agents } = Client::connect(&state()?)?.request(&Request::List { all })? else {
                return Err(unexpected());
            };
            if json {
                // An array still (scripts index it), each agent versioned.
                println!("{}", serde_json::to_string_pretty(&versioned(&agents)).expect("serializes"));
            } else {
                print!("{}", render_tree(&agents));
            }
            Ok(0)
        }
        Command::View { address, lines, json } => {
            let (agent, log, _) = info(&state()?, &address)?;
            let output = tail_lines(&log, lines);
            if json {
                let value = serde_json::json!({ "v": JSON_VERSION, "agent": agent, "output": output });
                println!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
            } else {
                println!("{}", describe(&agent));
                // A structured CLI's JSON lines, as its messages, tool calls and result.
                let output = match agent.harness.parser() {
                    Some(_) => readable_tail(agent.harness, &log, lines),
                    None => output,
                };
                for line in output {
                    println!("  {line}");
                }
            }
            Ok(0)
        }
        Command::Logs { address, follow } => logs(&state()?, &address, follow),
        Command::Events { follow, since, agent, json } => {
            let agent = agent.map(|a| Address::resolve(&a, &caller())).transpose()?.map(|a| a.to_string());
            // A person on a terminal reads lines; a script gets JSON.
            let human = !json && crate::cli::human::stdout_is_terminal();
            events(&state()?, since, follow, agent, human)
        }
        Command::Stop { address, all, grace, json } => {
            let address = match (all, address) {
                (true, _) | (false, None) => Address::root(),
                (false, Some(text)) => Address::resolve(&text, &caller())?,
            };
            let request = Request::Stop { address: address.to_string(), grace_secs: grace.map(|d| d.as_secs_f64()) };
            let Response::Stopped { agents } = Client::connect(&state()?)?.request(&request)? else {
                return Err(unexpected());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&versioned(&agents)).expect("serializes"));
            } else {
                for agent in &agents {
                    println!("{}", describe(agent));
                }
            }
            Ok(0)
        }
        Command::Wait { addresses, timeout, json } => {
            let caller = caller();
            let addresses = addresses
                .iter()
                .map(|a| Address::resolve(a, &caller).map(|a| a.to_string()))
                .collect::<Result<Vec<_>>>()?;
            let state = state()?;
            let mut client = Client::connect(&state)?;
            // On a terminal, a live line per agent still waited for.
            let waiting = crate::cli::top::waiting::show(&state, &addresses);
            let request = Request::Wait { addresses, timeout_secs: timeout.map(|d| d.as_secs_f64()) };
            let answer = client.request(&request);
            if let Some(waiting) = waiting {
                waiting.finish();
            }
            let Response::Waited { agents, timed_out } = answer? else {
                return Err(unexpected());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&versioned(&agents)).expect("serializes"));
            } else {
                for agent in &agents {
                    println!("{}", describe(agent));
                }
            }
            let worst = agents.iter().map(AgentRecord::wait_code).max().unwrap_or(0);
            Ok(if timed_out { WAIT_TIMED_OUT } else { worst })
        }
        Command::Attach { address } => attach(&state()?, &address),
        Command::Gc { force, older_than, json } => {
            let request = Request::Gc { force, older_than_secs: older_than.map(|d| d.as_secs_f64()) };
            let Response::Gc { removed, kept } = Client::connect(&state()?)?.request(&request)? else {
                return Err(unexpected());
            };
            if json {
                let value = serde_json::json!({ "v": JSON_VERSION, "removed": removed, "kept": kept });
                println!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
            } else {
                for entry in &removed {
                    println!("removed {} ({}): {}", entry.worktree.display(), entry.address, entry.why);
                }
                for entry in &kept {
                    println!("kept {} ({}): {}", entry.worktree.display(), entry.address, entry.why);
                }
                if removed.is_empty() && kept.is_empty() {
                    println!("nothing to remove");
                }
            }
            Ok(0)
        }
        Command::Shutdown => {
            let state = state()?;
            crate::cli::client::check_owner(&state)?;
            if !state.socket().exists() {
                println!("no daemon runs for {}", state.repo_root.display());
                return Ok(0);
            }
            match Client::connect_existing(&state) {
                Ok(mut client) => {
                    client.request(&Request::Shutdown)?;
                    println!("daemon stopped; agents keep running");
                }
                Err(_) => println!("no daemon runs for {}", state.repo_root.display()),
            }
            Ok(0)
        }
    }
}

/// A probe from the command line: JSON, or a TOML inline table.
fn parse_probe(flag: &str, text: &str) -> Result<corral_probes::ProbeSpec> {
    let bad = |why: String| Error::new(ErrorKind::BadConfig, format!("{flag} {text:?}: {why}"));
    if text.trim_start().starts_with('{') {
        match serde_json::from_str(text) {
            Ok(spec) => return Ok(spec),
            // Good JSON that is not a good probe: say why, rather than
            // how it fails to be TOML.
            Err(e) if e.is_data() => return Err(bad(e.to_string())),
            Err(_) => {}
        }
    }
    #[derive(serde::Deserialize)]
    struct Wrapper {
        probe: corral_probes::ProbeSpec,
    }
    toml::from_str::<Wrapper>(&format!("probe = {text}")).map(|w| w.probe).map_err(|e| bad(e.message().to_string()))
}

/// `corral usage`: a saved transcript's token and cost totals.
fn usage(harness: &str, file: &Path, json: bool) -> Result<i32> {
    let Some(mut parser) = harness.parse::<corral_harness::Harness>().ok().and_then(|h| h.parser()) else {
        return Err(Error::new(
            ErrorKind::BadHarness,
            format!("no usage parser for harness {harness:?} (known: claude, codex, gemini, opencode, aider)"),
        ));
    };
    let bytes = std::fs::read(file).map_err(|e| Error::io("cannot read", file, e))?;
    for line in bytes.split(|&b| b == b'\n') {
        parser.feed_line(line.strip_suffix(b"\r").unwrap_or(line));
    }
    let totals = parser.totals();
    let t = totals.tokens;
    if json {
        let value = serde_json::json!({
            "v": JSON_VERSION,
            "input": t.input, "output": t.output, "cache_read": t.cache_read, "cache_write": t.cache_write,
            "cost_usd": totals.cost_usd,
        });
        println!("{value}");
    } else {
        println!("input       {:>12}", t.input);
        println!("output      {:>12}", t.output);
        println!("cache read  {:>12}", t.cache_read);
        println!("cache write {:>12}", t.cache_write);
        match totals.cost_usd {
            Some(cost) => println!("cost        {:>12}", format!("${cost:.6}")),
            None => println!("cost        {:>12}", "unknown"),
        }
    }
    Ok(0)
}

/// The caller's own address: `/root` for a person, or the agent's.
fn caller() -> Address {
    std::env::var("CORRAL_ADDRESS").ok().and_then(|a| Address::parse(&a).ok()).unwrap_or_else(Address::root)
}

fn unexpected() -> Error {
    Error::other("the daemon gave an unexpected answer")
}

fn info(state: &StateDir, address: &str) -> Result<(AgentRecord, PathBuf, PathBuf)> {
    let address = Address::resolve(address, &caller())?;
    match Client::connect(state)?.request(&Request::Info { address: address.to_string() })? {
        Response::Info { agent, log, monitor_socket } => Ok((*agent, log, monitor_socket)),
        _ => Err(unexpected()),
    }
}

/// One line saying where an agent is and how it ended.
pub fn describe(agent: &AgentRecord) -> String {
    let mut text = format!("{} {}", agent.address, agent.state.as_str());
    if let Some(pid) = agent.pid {
        text.push_str(&format!(" pid {pid}"));
    }
    if let Some(runtime) = agent.runtime_secs(Utc::now()) {
        text.push_str(&format!(" runtime {}", human_secs(runtime)));
    }
    match (agent.exit_code, agent.signal) {
        (Some(code), _) => text.push_str(&format!(" exit {code}")),
        (None, Some(signal)) => text.push_str(&format!(" signal {signal}")),
        _ => {}
    }
    if agent.usage.total() > 0 {
        let u = agent.usage;
        text.push_str(&format!(
            " tokens in {} out {} cache read {} write {}",
            u.input, u.output, u.cache_read, u.cache_write
        ));
    }
    if let Some(cost) = agent.cost_usd {
        text.push_str(&format!(" cost ${cost:.4}"));
    }
    if let Some(reason) = &agent.reason {
        text.push_str(&format!(" ({reason})"));
    }
    match &agent.merge_state {
        Some(MergeState::Merged { commit, commits }) => {
            let short = &commit[..commit.len().min(10)];
            text.push_str(&format!(
                "; merged into {} at {short} ({commits} commits)",
                agent.merge.target.as_deref().unwrap_or("?")
            ))
        }
        Some(MergeState::Conflict { files }) => text.push_str(&format!("; merge conflict in {}", files.join(", "))),
        Some(MergeState::GateFailed { code, output }) => {
            let tail: String =
                output.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
            text.push_str(&format!("; gate failed (exit {}): {tail}", code.map_or("?".into(), |c| c.to_string())))
        }
        Some(MergeState::Waiting { why, .. }) => text.push_str(&format!("; merge waiting: {why}")),
        Some(MergeState::Refused { why }) => text.push_str(&format!("; merge refused: {why}")),
        Some(other) => text.push_str(&format!("; merge {}", other.as_str())),
        None => {}
    }
    text
}

/// The state, with readiness while running and the restart count.
fn state_cell(agent: &AgentRecord) -> String {
    let mut text = match &agent.merge_state {
        Some(merge) => merge.as_str().to_string(),
        None => agent.state.as_str().to_string(),
    };
    if agent.state == crate::model::lifecycle::AgentState::Running && !agent.ready {
        text.push_str(" (not ready)");
    }
    if agent.restarts > 0 {
        text.push_str(&format!(" ↻{}", agent.restarts));
    }
    text
}

/// "used", "used/limit", or "-".
fn spend_cell(used: Option<String>, limit: Option<String>) -> String {
    match (used, limit) {
        (used, Some(limit)) => format!("{}/{limit}", used.unwrap_or_else(|| "0".into())),
        (Some(used), None) => used,
        (None, None) => "-".into(),
    }
}

/// 1234 -> 1.2k, 1234567 -> 1.2M.
pub fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

pub fn human_secs(secs: f64) -> String {
    let whole = secs as u64;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// What the agent runs under, as enforced: `workspace-write`, `read-only
/// net:none`, `full` (unrestricted, whether asked for or not); `!` when
/// something asked for is not enforced (`sandbox_fallback = "warn"`).
fn sandbox_cell(agent: &AgentRecord) -> String {
    match &agent.enforced {
        Some(enforced) => enforced.summary(),
        None => "full".into(),
    }
}

/// `corral ps`: the tree, children indented under their parents.
pub fn render_tree(agents: &[AgentRecord]) -> String {
    let now = Utc::now();
    let header = ["ADDRESS", "STATE", "PID", "RUNTIME", "EXIT", "TOKENS", "COST", "SANDBOX", "TASK"];
    let mut rows = vec![header.map(String::from)];
    for agent in agents {
        let indent = "  ".repeat(agent.address.depth().saturating_sub(1));
        let exit = match (agent.exit_code, agent.signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("sig{signal}"),
            _ => "-".into(),
        };
        let mut task: String = agent.task.chars().take(48).collect();
        if agent.task.chars().count() > 48 {
            task.push('…');
        }
        rows.push([
            format!("{indent}{}", agent.address),
            state_cell(agent),
            agent.pid.map_or("-".into(), |p| p.to_string()),
            agent.runtime_secs(now).map_or("-".into(), human_secs),
            exit,
            spend_cell(
                (agent.usage.total() > 0).then(|| human_count(agent.usage.total())),
                agent.budget.tokens.map(human_count),
            ),
            spend_cell(agent.cost_usd.map(|c| format!("${c:.4}")), agent.budget.cost.map(|c| format!("${c:.2}"))),
            sandbox_cell(agent),
            task,
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == row.len() - 1 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if agents.is_empty() {
        out.push_str("(no agents)\n");
    }
    out
}

/// The last `count` readable lines of a log.
fn tail_lines(log: &Path, count: usize) -> Vec<String> {
    let Ok(mut file) = std::fs::File::open(log) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let lines: Vec<String> = bytes.split(|&b| b == b'\n').map(clean_line).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

/// The last `count` lines of a structured agent's output as text: its
/// messages, tool calls and result, through its harness's parser.
fn readable_tail(harness: corral_harness::Harness, log: &Path, count: usize) -> Vec<String> {
    // The last 4 MiB hold the last lines of any agent.
    let bytes = crate::cli::top::read_tail(log, 4 << 20).unwrap_or_default();
    let lines = crate::cli::human::readable_log(harness, &bytes);
    lines[lines.len().saturating_sub(count)..].to_vec()
}

/// The version every `--json` output carries as `"v"` (README, "Every
/// read command takes --json").
pub const JSON_VERSION: u32 = 1;

/// `value` as JSON with `"v":1`: on the object, or on each object of an
/// array, so an array (`ps --json`) stays an array that scripts index.
pub fn versioned<T: serde::Serialize>(value: &T) -> serde_json::Value {
    let mut value = serde_json::to_value(value).expect("serializes");
    let stamp = |object: &mut serde_json::Map<String, serde_json::Value>| {
        object.insert("v".into(), JSON_VERSION.into());
    };
    match &mut value {
        serde_json::Value::Object(object) => stamp(object),
        serde_json::Value::Array(items) => items.iter_mut().filter_map(|i| i.as_object_mut()).for_each(stamp),
        _ => {}
    }
    value
}

/// `corral man [COMMAND]`: the man page, as roff, on stdout.
fn man(command: Option<&str>) -> Result<i32> {
    use clap::CommandFactory;
    let cli = Cli::command();
    let page = match command {
        None => cli,
        Some(name) => {
            let Some(sub) = cli.find_subcommand(name) else {
                return Err(Error::other(format!("no command {name:?} (see `corral --help`)")));
            };
            sub.clone().name(format!("corral-{name}"))
        }
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .map_err(|e| Error::other(format!("cannot render the man page: {e}")))?;
    std::io::stdout().write_all(&out).map_err(|e| Error::other(format!("cannot print the man page: {e}")))?;
    Ok(0)
}

fn logs(state: &StateDir, address: &str, follow: bool) -> Result<i32> {
    let (agent, log, _) = info(state, address)?;
    let mut file = std::fs::File::open(&log).map_err(|e| Error::io("cannot open", &log, e))?;
    let mut out = std::io::stdout().lock();
    let copy = |file: &mut std::fs::File, out: &mut std::io::StdoutLock| -> Result<()> {
        match std::io::copy(file, out).and_then(|_| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => Err(Error::other(format!("cannot write the log out: {e}"))),
        }
    };
    copy(&mut file, &mut out)?;
    if !follow || agent.state.is_terminal() {
        return Ok(0);
    }
    // A second connection waits for the end; this one copies as output grows.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let (state, address) = (state.clone(), agent.address.to_string());
    std::thread::spawn(move || {
        let result = Client::connect(&state)
            .and_then(|mut c| c.request(&Request::Wait { addresses: vec![address], timeout_secs: None }));
        let _ = done_tx.send(result.is_ok());
    });
    loop {
        let ended = done_rx.recv_timeout(Duration::from_millis(50)).is_ok();
        copy(&mut file, &mut out)?;
        if ended {
            return Ok(0);
        }
    }
}

fn events(state: &StateDir, since: u64, follow: bool, agent: Option<String>, human: bool) -> Result<i32> {
    let mut client = Client::connect(state)?;
    client.send(&Request::Events { since, follow, agent })?;
    let color = human && crate::cli::human::color_allowed(true);
    let mut out = std::io::stdout().lock();
    loop {
        match client.receive()? {
            Some(Response::Event { event }) => {
                let line = match human {
                    true => crate::cli::human::event_line(&event, color),
                    false => serde_json::to_string(&event).expect("serializes"),
                };
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    return Ok(0); // The reader went away (`| head`).
                }
            }
            Some(Response::End) => return Ok(0),
            Some(_) => return Err(unexpected()),
            None => {
                return Err(Error::new(ErrorKind::DaemonUnavailable, "the daemon closed the event stream"));
            }
        }
    }
}

/// Ctrl-]: the detach key, as in telnet.
const DETACH_KEY: u8 = 0x1d;

/// `corral attach`, and Enter in `corral top`.
pub(crate) fn attach(state: &StateDir, address: &str) -> Result<i32> {
    let (agent, _, socket) = info(state, address)?;
    if agent.state.is_terminal() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "{} has ended ({}); `corral logs {}` shows its output",
                agent.address,
                agent.state.as_str(),
                agent.address
            ),
        ));
    }
    // Watched from before the size is read, so no change of it is missed.
    let winch = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH]).ok();
    let size = terminal_size();
    let mut stream = std::os::unix::net::UnixStream::connect(&socket)
        .map_err(|e| Error::other(format!("cannot reach the monitor of {}: {e}", agent.address)))?;
    let hello = match size {
        Some((rows, cols)) => format!("{{\"role\":\"attach\",\"replay\":8192,\"rows\":{rows},\"cols\":{cols}}}\n"),
        None => "{\"role\":\"attach\",\"replay\":8192}\n".to_string(),
    };
    stream.write_all(hello.as_bytes()).map_err(|e| Error::other(e.to_string()))?;
    // The stream is raw bytes; each new size goes on a connection of its own.
    let winch = match (winch, size) {
        (Some(mut signals), Some(mut sent)) => {
            let handle = signals.handle();
            let socket = socket.clone();
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    match terminal_size() {
                        Some(now) if now != sent => {
                            sent = now;
                            send_resize(&socket, now);
                        }
                        _ => {}
                    }
                }
            });
            Some(handle)
        }
        _ => None,
    };
    let stdin = std::io::stdin();
    let raw = stdin.is_terminal().then(RawTerminal::enable).transpose()?;
    if raw.is_some() {
        eprint!("attached to {} (Ctrl-] detaches)\r\n", agent.address);
    }
    let mut from_agent = stream.try_clone().map_err(|e| Error::other(e.to_string()))?;
    let printer = std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 8192];
        loop {
            match from_agent.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut input = stdin.lock();
    let mut buf = [0u8; 1024];
    let detached = loop {
        if printer.is_finished() {
            break false;
        }
        let n = match input.read(&mut buf) {
            // SIGWINCH may interrupt the read.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break true,
            Ok(n) => n,
        };
        if let Some(at) = buf[..n].iter().position(|&b| b == DETACH_KEY) {
            let _ = stream.write_all(&buf[..at]);
            break true;
        }
        if stream.write_all(&buf[..n]).is_err() {
            break false;
        }
    };
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = printer.join();
    if let Some(winch) = winch {
        winch.close();
    }
    drop(raw);
    if detached {
        eprintln!("\ndetached from {}", agent.address);
    } else {
        eprintln!("\n{} ended", agent.address);
    }
    Ok(0)
}

/// The size (rows, columns) of the terminal on stdout or stdin, if either is one.
fn terminal_size() -> Option<(u16, u16)> {
    use std::os::fd::AsRawFd;
    [std::io::stdout().as_raw_fd(), std::io::stdin().as_raw_fd()].into_iter().find_map(|fd| {
        let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ only writes a `winsize` into `size`.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
        (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
    })
}

/// Tells the monitor at `socket` the terminal's new size, and waits until
/// it has applied it (it closes the connection), so sizes arrive in order.
fn send_resize(socket: &Path, (rows, cols): (u16, u16)) {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else { return };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let hello = format!("{{\"role\":\"resize\",\"rows\":{rows},\"cols\":{cols}}}\n");
    if stream.write_all(hello.as_bytes()).is_ok() {
        let _ = stream.read_to_end(&mut Vec::new());
    }
}

/// Puts the terminal in raw mode; restores it when dropped.
struct RawTerminal {
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    fn enable() -> Result<RawTerminal> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).map_err(|e| Error::other(format!("cannot read the terminal mode: {e}")))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).map_err(|e| Error::other(format!("cannot set raw mode: {e}")))?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}
