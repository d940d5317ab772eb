//! What each `corral` command does, on the client side.
//!
//! Commands resolve addresses relative to the caller: a person or script
//! is `/root`; an agent started by corral is its own address
//! (`CORRAL_ADDRESS`), so `corral spawn helper` inside `/root/lead` makes
//! `/root/lead/helper`. Errors print one line and exit with the code of
//! their kind (README, "Exit codes").

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::args::{Cli, Command};
use crate::cli::client::Client;
use crate::model::address::{validate_name, Address};
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::lifecycle::{AgentRecord, WAIT_TIMED_OUT};
use crate::sys::paths::StateDir;
use crate::wire::protocol::{Request, Response, SpawnRequest};

pub(crate) use super::attach::attach;
pub use super::table::{describe, human_count, human_secs, render_tree};

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

/// `corral monitor DIR`: the per-agent monitor, until its agent ended.
pub fn run_monitor(dir: &std::path::Path) -> i32 {
    match crate::monitor::run(dir) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("corral: monitor: {err:#}");
            ErrorKind::Other.exit_code()
        }
    }
}

/// Prints a command-line error and gives its exit code: clap's own (2
/// for a bad command line, 0 for `--help`), except that a duration corral
/// cannot use, or an amount `corral budget` cannot add, exits 13 like any
/// other bad number (README, "Exit codes").
pub fn parse_error(err: clap::Error) -> i32 {
    use std::error::Error as _;
    let bad_duration = err.kind() == clap::error::ErrorKind::ValueValidation
        && err.source().is_some_and(|source| {
            source.is::<crate::model::duration::DurationError>() || source.is::<crate::model::budget::AmountError>()
        });
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
        Command::Monitor { dir } => Ok(run_monitor(&dir)),
        Command::FakeAgent { script } => Ok(crate::cli::fake_agent::run(&script)),
        Command::Demo { keep } => crate::cli::demo::run(keep),
        Command::Doctor { json } => crate::cli::doctor::run(&start, json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "corral", &mut script);
            crate::cli::out::write_bytes(&script);
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
                report!("{}", serde_json::to_string_pretty(&versioned(&agent)).expect("serializes"));
            } else {
                report!("{}", describe(&agent));
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
                say!("{}", serde_json::to_string_pretty(&versioned(&agent)).expect("serializes"));
            } else if agent.queued_tasks.is_empty() {
                say!("{} {}  ({})", agent.address, agent.task_id, agent.state.as_str());
            } else {
                let (id, _) = agent.queued_tasks.last().expect("not empty");
                say!("{} {id}  (queued: it runs when {} finishes its task)", agent.address, agent.task_id);
            }
            Ok(0)
        }
        Command::Budget { address, add_tokens, add_cost, json } => {
            // Checked here with the exit code of a bad budget, before any daemon starts.
            if add_tokens.is_none() && add_cost.is_none() {
                return Err(Error::new(ErrorKind::BadBudget, "say what to add: --add-tokens N or --add-cost USD"));
            }
            let caller = caller();
            let address = Address::resolve(&address, &caller)?.to_string();
            let request = Request::RaiseBudget { address, add_tokens, add_cost, by: caller.to_string() };
            let Response::Agent { agent } = Client::connect(&state()?)?.request(&request)? else {
                return Err(unexpected());
            };
            if json {
                say!("{}", serde_json::to_string_pretty(&versioned(&agent)).expect("serializes"));
            } else {
                let mut limits = Vec::new();
                if let Some(tokens) = agent.budget.tokens.filter(|_| add_tokens.is_some()) {
                    limits.push(format!("tokens {tokens}"));
                }
                if let Some(cost) = agent.budget.cost.filter(|_| add_cost.is_some()) {
                    limits.push(format!("cost ${cost:.4}"));
                }
                let now = match &agent.paused {
                    Some(p) => format!("still paused: {}", p.kind.describe(p.used, p.limit)),
                    None => agent.state.as_str().to_string(),
                };
                say!("{}: budget raised to {} ({now})", agent.address, limits.join(", "));
            }
            Ok(0)
        }
        Command::Diff { address } => {
            let address = Address::resolve(&address, &caller())?.to_string();
            let Response::Diff { patch } = Client::connect(&state()?)?.request(&Request::Diff { address })? else {
                return Err(unexpected());
            };
            crate::cli::out::write_bytes(patch.as_bytes());
            Ok(0)
        }
        Command::Send { address, text, from, json } => {
            let caller = caller();
            let to = Address::resolve(&address, &caller)?.to_string();
            let from = from.unwrap_or_else(|| caller.to_string());
            let message_id = crate::cli::client::send_message(&state()?, to, from, text)?;
            if json {
                say!("{}", serde_json::json!({ "v": JSON_VERSION, "message_id": message_id }));
            } else {
                say!("{message_id}");
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
            on_exceeded,
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
            meter,
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
                on_exceeded,
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
                meter,
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
            let env = crate::cli::client::environment();
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
                say!("{}", serde_json::to_string(&versioned(&spawned)).expect("serializes"));
            } else {
                let how = match spawned.pid {
                    0 => "pending: max_threads agents run already".to_string(),
                    pid => format!("pid {pid}"),
                };
                let (address, task_id, branch) = (&spawned.address, &spawned.task_id, &spawned.branch);
                say!("{address} {task_id}  ({how}, branch {branch}, worktree {})", spawned.worktree.display());
            }
            Ok(0)
        }
        Command::Ps { all, json } => {
            // Without --all, the recent view; with it, all of history, page by page.
            let mut client = Client::connect(&state()?)?;
            if json {
                // An array still (scripts index it), each agent versioned,
                // written a page at a time.
                use serde::ser::{SerializeSeq, Serializer};
                let failed = |e: serde_json::Error| -> Error { crate::cli::out::failed(&e.into()) };
                let mut out = serde_json::Serializer::pretty(std::io::BufWriter::new(std::io::stdout().lock()));
                let mut array = out.serialize_seq(None).map_err(failed)?;
                let ask = |request: &Request| client.request(request);
                crate::cli::client::list_pages(ask, all, !all, None, |page| {
                    page.iter().try_for_each(|agent| array.serialize_element(&versioned(agent)).map_err(failed))
                })?;
                array.end().map_err(failed)?;
                let mut out = out.into_inner();
                if let Err(err) = writeln!(out).and_then(|_| out.flush()) {
                    crate::cli::out::failed(&err);
                }
            } else {
                let (agents, older) = client.list(all, !all, None)?;
                crate::cli::out::write_bytes(render_tree(&agents).as_bytes());
                if older > 0 {
                    let s = if older == 1 { "" } else { "s" };
                    say!("({older} older agent{s} not shown: `corral ps --all` lists every agent)");
                }
            }
            Ok(0)
        }
        Command::View { address, lines, json } => {
            let (agent, log, _) = info(&state()?, &address)?;
            let output = tail_lines(&log, lines);
            if json {
                let value = serde_json::json!({ "v": JSON_VERSION, "agent": agent, "output": output });
                say!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
            } else {
                say!("{}", describe(&agent));
                // A structured CLI's JSON lines, as its messages, tool calls and result.
                let output = match agent.harness.parser() {
                    Some(_) => readable_tail(agent.harness, &log, lines),
                    None => output,
                };
                for line in output {
                    say!("  {line}");
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
            print_agents(&agents, json);
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
            print_agents(&agents, json);
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
                say!("{}", serde_json::to_string_pretty(&value).expect("serializes"));
            } else {
                for entry in &removed {
                    say!("removed {} ({}): {}", entry.worktree.display(), entry.address, entry.why);
                }
                for entry in &kept {
                    say!("kept {} ({}): {}", entry.worktree.display(), entry.address, entry.why);
                }
                if removed.is_empty() && kept.is_empty() {
                    say!("nothing to remove");
                }
            }
            Ok(0)
        }
        Command::Shutdown => {
            let state = state()?;
            crate::cli::client::check_owner(&state)?;
            if !state.socket().exists() {
                say!("no daemon runs for {}", state.repo_root.display());
                return Ok(0);
            }
            match Client::connect_existing(&state) {
                Ok(mut client) => {
                    client.request(&Request::Shutdown)?;
                    say!("daemon stopped; agents keep running");
                }
                Err(_) => say!("no daemon runs for {}", state.repo_root.display()),
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
        say!("{value}");
    } else {
        say!("input       {:>12}", t.input);
        say!("output      {:>12}", t.output);
        say!("cache read  {:>12}", t.cache_read);
        say!("cache write {:>12}", t.cache_write);
        match totals.cost_usd {
            Some(cost) => say!("cost        {:>12}", format!("${cost:.6}")),
            None => say!("cost        {:>12}", "unknown"),
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

/// Agents as `stop`, `wait` and `ps --json` print them: versioned JSON,
/// or a line each for a person.
fn print_agents(agents: &[AgentRecord], json: bool) {
    if json {
        report!("{}", serde_json::to_string_pretty(&versioned(&agents)).expect("serializes"));
    } else {
        for agent in agents {
            report!("{}", describe(agent));
        }
    }
}

pub(super) fn info(state: &StateDir, address: &str) -> Result<(AgentRecord, PathBuf, PathBuf)> {
    let address = Address::resolve(address, &caller())?;
    match Client::connect(state)?.request(&Request::Info { address: address.to_string() })? {
        Response::Info { agent, log, monitor_socket } => Ok((*agent, log, monitor_socket)),
        _ => Err(unexpected()),
    }
}

use crate::sys::output::tail_lines;

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
    crate::cli::out::write_bytes(&out);
    Ok(0)
}

fn logs(state: &StateDir, address: &str, follow: bool) -> Result<i32> {
    let (agent, log, _) = info(state, address)?;
    let mut file = std::fs::File::open(&log).map_err(|e| Error::io("cannot open", &log, e))?;
    let mut out = std::io::stdout().lock();
    let copy = |file: &mut std::fs::File, out: &mut std::io::StdoutLock| -> Result<()> {
        if let Err(err) = std::io::copy(file, out).and_then(|_| out.flush()) {
            crate::cli::out::failed(&err);
        }
        Ok(())
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
                if let Err(err) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    crate::cli::out::failed(&err);
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
