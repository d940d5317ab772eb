//! The command line, as typed: clap definitions only. What each command
//! does lives in `commands`.
//!
//! Flags that take one of a few words (`--sandbox`, `--merge`,
//! `--strategy`, `--restart`) take the configuration's own types, spelled
//! as in `corral.toml`, through [`clap::ValueEnum`]; clap refuses any other
//! word as a bad command line (exit 2) and lists the words it takes.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{MergePolicy, MergeStrategy, RestartPolicy, Sandbox};

#[derive(Debug, Parser)]
#[command(name = "corral", version, about = "A supervisor for coding agents: each in its own git worktree and PTY")]
pub struct Cli {
    /// Run as if corral was started in this folder.
    #[arg(short = 'C', global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process; the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an agent in its own worktree and PTY; prints its address and task id.
    #[command(display_order = 1)]
    Spawn {
        /// The agent's name; it lives at /root/NAME (or under --parent).
        name: String,
        /// The instruction for the agent (also in its environment as CORRAL_TASK).
        #[arg(long, default_value = "")]
        task: String,
        /// Nest the agent under this agent's address.
        #[arg(long, value_name = "ADDRESS")]
        parent: Option<String>,
        /// Branch the worktree from this commit, branch or tag (default HEAD).
        #[arg(long, value_name = "REF")]
        base: Option<String>,
        /// A role from corral.toml (`[agents.NAME]`): harness, model, budget,
        /// probes, restart policy... Flags override it.
        #[arg(long)]
        role: Option<String>,
        /// The agent CLI: claude, codex, gemini, opencode, aider, or generic
        /// (any command; the default).
        #[arg(long)]
        harness: Option<String>,
        /// The model, passed to the agent CLI.
        #[arg(long)]
        model: Option<String>,
        /// Stop the agent (and its subtree) once they used this many tokens
        /// (input + output + cache read + cache write).
        #[arg(long, value_name = "N")]
        max_tokens: Option<u64>,
        /// ... or this many output tokens.
        #[arg(long, value_name = "N")]
        max_output_tokens: Option<u64>,
        /// ... or spent this many US dollars.
        #[arg(long, value_name = "USD", allow_negative_numbers = true)]
        max_cost: Option<f64>,
        /// What a spent token, output-token or cost budget does: stop the
        /// subtree (the default), or pause it (frozen, no call sent) until
        /// `corral budget` raises it.
        #[arg(long, value_name = "ACTION")]
        on_exceeded: Option<crate::model::budget::OnExceeded>,
        /// ... or ran this long (state timed_out): seconds, or 30s, 5m, 2h.
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        timeout: Option<Duration>,
        /// ... or printed nothing for this long.
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        idle_timeout: Option<Duration>,
        /// Time between SIGTERM and SIGKILL when corral stops it (default:
        /// `[supervisor] grace`, else 10s). `corral stop` uses it too.
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        grace: Option<Duration>,
        /// A startup probe, as JSON or a TOML inline table, e.g.
        /// '{ log_line = "ready", period_seconds = 1 }'.
        #[arg(long, value_name = "PROBE")]
        startup: Option<String>,
        /// A readiness probe (marks the agent ready or not; never kills).
        #[arg(long, value_name = "PROBE")]
        readiness: Option<String>,
        /// A liveness probe (failing it stops the agent; then --restart applies).
        #[arg(long, value_name = "PROBE")]
        liveness: Option<String>,
        /// Never (the default), OnFailure or Always.
        #[arg(long, value_name = "POLICY")]
        restart: Option<RestartPolicy>,
        /// At most this many restarts.
        #[arg(long, value_name = "N")]
        restart_limit: Option<u32>,
        /// First restart back-off (default 10s; doubles up to --max-backoff).
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        backoff: Option<Duration>,
        /// Longest back-off (default 5m).
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        max_backoff: Option<Duration>,
        /// A run this long (default 10m) resets the back-off.
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        reset_after: Option<Duration>,
        /// When its task succeeds: auto (through the merge queue), manual
        /// (the default: `corral merge`), or never.
        #[arg(long, value_name = "POLICY")]
        merge: Option<MergePolicy>,
        /// The branch its work merges onto (default: the branch checked out now).
        #[arg(long, value_name = "BRANCH")]
        target: Option<String>,
        /// ff-only, merge (the default), rebase or squash.
        #[arg(long, value_name = "STRATEGY")]
        strategy: Option<MergeStrategy>,
        /// A shell command that must pass in its worktree before it merges.
        #[arg(long, value_name = "COMMAND")]
        gate: Option<String>,
        /// read-only, workspace-write or full (default: its parent's; a
        /// child never gets more than its parent).
        #[arg(long, value_name = "SANDBOX")]
        sandbox: Option<SandboxArg>,
        /// What TCP it may open: none, model (only corral's model proxy)
        /// or full (the default; a child never gets more than its parent).
        #[arg(long, value_name = "NETWORK")]
        network: Option<crate::config::Network>,
        /// Where its usage is counted: proxy (corral's metering proxy on the
        /// wire; the default for every harness but generic) or stream (its
        /// CLI's own usage lines; the default for a plain command).
        #[arg(long, value_name = "METER")]
        meter: Option<crate::model::budget::Meter>,
        /// The most memory it may use: 512M, 2G, or bytes.
        #[arg(long, value_name = "SIZE", value_parser = memory)]
        max_memory: Option<u64>,
        /// The most processes it may have at once.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_processes: Option<u64>,
        /// The most files each of its processes may hold open.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_open_files: Option<u64>,
        /// What it tells its parent agent: completion (when it ends and
        /// when its merge settles; the default under an agent), progress
        /// (also digests while it runs), or none.
        #[arg(long, value_name = "WHAT")]
        notify: Option<crate::model::notify::Notify>,
        /// Start from a copy of the parent's Claude Code session (its
        /// history; the parent's session goes on unchanged).
        #[arg(long, requires = "parent")]
        fork_session: bool,
        #[arg(long)]
        json: bool,
        /// For the generic harness, the command and its arguments; for
        /// another harness, extra arguments for its CLI.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Merge an ended agent's work onto its target now (or again), through
    /// the merge queue; the exit code says how it went.
    #[command(display_order = 11)]
    Merge {
        address: String,
        /// ff-only, merge, rebase or squash (default: the agent's own).
        #[arg(long)]
        strategy: Option<MergeStrategy>,
        #[arg(long)]
        json: bool,
    },
    /// What an agent changed, as a patch against where it started.
    #[command(display_order = 12)]
    Diff { address: String },
    /// Give an idle (ended) agent its next task in its worktree, continuing
    /// its session where its CLI can.
    #[command(display_order = 7)]
    Assign {
        address: String,
        task: String,
        /// If it is busy, give it the task when it finishes.
        #[arg(long)]
        queue: bool,
        #[arg(long)]
        json: bool,
    },
    /// Queue a message for a running agent (delivered in order, never dropped).
    #[command(display_order = 6)]
    Send {
        address: String,
        text: String,
        /// Who it is from (default: your own address, `/root` for a person).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Raise a live agent's token or cost budget; a paused agent whose
    /// budget is no longer spent runs on where it stopped.
    #[command(display_order = 9)]
    Budget {
        address: String,
        /// Tokens to add to its token budget.
        #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = raise_tokens)]
        add_tokens: Option<u64>,
        /// US dollars to add to its cost budget.
        #[arg(long, value_name = "USD", allow_negative_numbers = true, value_parser = raise_cost)]
        add_cost: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Token and cost totals of a saved agent transcript.
    #[command(display_order = 14)]
    Usage {
        /// The CLI that wrote the transcript: claude, codex, gemini, opencode, aider.
        #[arg(long)]
        harness: String,
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Serve scripted model responses on loopback: the Anthropic Messages,
    /// OpenAI Responses, OpenAI Chat Completions and Gemini
    /// (generateContent, streamGenerateContent) APIs, for Claude Code, Codex,
    /// opencode, Aider and Gemini CLI.
    ///
    /// Point a CLI at the printed URL: ANTHROPIC_BASE_URL=URL (Claude Code),
    /// a Codex provider base_url URL/v1, GOOGLE_GEMINI_BASE_URL=URL and
    /// GEMINI_API_KEY (Gemini CLI), OPENAI_API_BASE=URL/v1 with --model
    /// openai/NAME (Aider), an opencode provider baseURL URL/v1.
    #[command(display_order = 15)]
    MockLlm {
        /// The script: JSON steps, one per model request (see the README).
        #[arg(long)]
        script: PathBuf,
        /// The port on 127.0.0.1 (default: any free one, printed on start).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Append every request received to this file as a JSON line.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Serve corral's tools (run_background_agent, spawn_agent, list_agents,
    /// view_background_agent, ...) over MCP on stdin and stdout, acting at
    /// the caller's address (CORRAL_ADDRESS inside an agent, else /root).
    #[command(display_order = 16)]
    Mcp,
    /// The agent tree: address, state, pid, runtime, exit.
    #[command(display_order = 2)]
    Ps {
        /// Every agent of the history, those `gc` removed included
        /// (without it: the agents not done yet and the last 100 that ended
        /// within a day).
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// An agent's recent output while it runs, its final output and exit when done.
    #[command(display_order = 3)]
    View {
        address: String,
        /// How many lines of output to show.
        #[arg(long, default_value_t = 20)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Everything an agent printed, byte for byte.
    #[command(display_order = 4)]
    Logs {
        address: String,
        /// Keep printing new output until the agent ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// The event stream: a line per event for a person on a terminal,
    /// JSON lines otherwise (or with --json).
    #[command(display_order = 5)]
    Events {
        /// Keep streaming new events.
        #[arg(short, long)]
        follow: bool,
        /// Only events after this seq.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Only events of this agent and the agents below it.
        #[arg(long, value_name = "PREFIX")]
        agent: Option<String>,
        /// JSON lines even on a terminal (they are whenever the output is
        /// not a terminal).
        #[arg(long)]
        json: bool,
    },
    /// Stop an agent and every agent below it.
    #[command(display_order = 8)]
    Stop {
        /// The agent; `/root` (or `--all`) stops every agent.
        #[arg(required_unless_present = "all")]
        address: Option<String>,
        /// Stop every agent (the same as `corral stop /root`).
        #[arg(long, conflicts_with = "address")]
        all: bool,
        /// Time between SIGTERM and SIGKILL (default: each agent's own
        /// grace, from `spawn --grace` or `[supervisor] grace`, else 10s).
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        grace: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Block until the agents end; the exit code says how (see the README).
    #[command(display_order = 9)]
    Wait {
        #[arg(required = true)]
        addresses: Vec<String>,
        /// Give up after this long (exit code 124): seconds, or 30s, 5m, 2h.
        #[arg(long, allow_negative_numbers = true, value_parser = duration)]
        timeout: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Connect this terminal to an agent's PTY; Ctrl-] detaches.
    #[command(display_order = 10)]
    Attach { address: String },
    /// Remove the worktrees of agents that are done, and their branches once merged.
    #[command(display_order = 13)]
    Gc {
        /// Also remove worktrees with uncommitted changes.
        #[arg(long)]
        force: bool,
        /// Only agents (a run's among them) that ended at least this long
        /// ago: seconds, or 12h, 7d.
        #[arg(long, value_name = "DURATION", allow_negative_numbers = true, value_parser = duration)]
        older_than: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Run a batch of agents from a run file (TOML): in dependency order,
    /// under a lock, with a report and an exit code (see the README, "Runs").
    #[command(display_order = 11)]
    Run {
        /// The run file.
        #[arg(required_unless_present = "resume", conflicts_with = "resume")]
        file: Option<PathBuf>,
        /// Finish a run whose driver ended before it did (its id, from `corral runs`).
        #[arg(long, value_name = "ID")]
        resume: Option<String>,
        /// Check the file and print what would run; start nothing.
        #[arg(long)]
        dry_run: bool,
        /// A value for `{{KEY}}` in the file's tasks and commands (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// The report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The runs of `corral run`: id, file, started, state, spend.
    #[command(display_order = 12)]
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// Internal: drives one run (the command of the agent at /root/<run id>).
    #[command(hide = true, name = "run-driver")]
    RunDriver {
        #[arg(long)]
        id: String,
    },
    /// A live view of the agent tree, with keys to attach, read the log and
    /// the diff, stop and merge (`?` lists them; `q` quits).
    #[command(display_order = 3)]
    Top,
    /// What this machine lets corral do: git, Landlock, cgroups, the agent
    /// CLIs found, the state folder's owner and mode. Exit 0 when corral
    /// can run.
    #[command(display_order = 21)]
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `corral completions bash > ~/.local/share/bash-completion/completions/corral`.
    #[command(display_order = 22)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `corral man | man -l -`, or save it as corral.1.
    #[command(display_order = 23)]
    Man {
        /// The page of one command (corral-spawn(1), ...) instead of corral(1).
        command: Option<String>,
    },
    /// Run the daemon in the foreground (clients start it on demand).
    #[command(display_order = 17)]
    Daemon,
    /// Stop the daemon; agents keep running and the next command re-adopts them.
    #[command(display_order = 18)]
    Shutdown,
    /// A demo: scripted agents working in parallel on a scratch repository.
    #[command(display_order = 19)]
    Demo {
        /// Keep the scratch repository and print where it is.
        #[arg(long)]
        keep: bool,
    },
    /// The scripted agent used by the demo and the tests (see `fake_agent`).
    #[command(display_order = 20)]
    FakeAgent {
        /// Steps separated by `;`, for example "progress 5 10; write a.txt hi; commit done; exit 0".
        script: String,
    },
    /// Internal: the per-agent monitor process.
    #[command(hide = true)]
    Monitor { dir: PathBuf },
    /// Internal: puts the agent's stdin in place and applies its sandbox,
    /// then execs it (runs in its PTY).
    #[command(hide = true)]
    ExecAgent {
        #[arg(long)]
        stdin: Option<PathBuf>,
        /// The sandbox plan (JSON) to apply before exec.
        #[arg(long)]
        sandbox: Option<PathBuf>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

/// Every duration flag's parser: `crate::model::duration::parse_arg`. A refusal
/// exits 13 (see `commands::exit_code_for_parse_error`).
fn duration(text: &str) -> Result<Duration, crate::model::duration::DurationError> {
    crate::model::duration::parse_arg(text)
}

/// `--max-memory`: a memory size (`512M`, `2G`, bytes).
fn memory(text: &str) -> Result<u64, String> {
    crate::sys::sandbox::parse_bytes(text)
}

/// `--sandbox`: a [`Sandbox`], spelled as in `corral.toml`. (`Sandbox` is
/// the harness crate's, which has no clap, so the spellings are given here.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxArg(pub Sandbox);

impl ValueEnum for SandboxArg {
    fn value_variants<'a>() -> &'a [Self] {
        &[SandboxArg(Sandbox::ReadOnly), SandboxArg(Sandbox::WorkspaceWrite), SandboxArg(Sandbox::Full)]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self.0 {
            Sandbox::ReadOnly => PossibleValue::new("read-only").help("reads anything, writes nothing"),
            Sandbox::WorkspaceWrite => PossibleValue::new("workspace-write").help("writes its own worktree only"),
            Sandbox::Full => PossibleValue::new("full").help("no restriction"),
        })
    }
}

/// A number of tokens to add: a whole number greater than 0.
fn raise_tokens(text: &str) -> Result<u64, crate::model::budget::AmountError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(crate::model::budget::AmountError(format!("{text:?} is not a whole number of tokens greater than 0"))),
    }
}

/// Dollars to add: a number greater than 0.
fn raise_cost(text: &str) -> Result<f64, crate::model::budget::AmountError> {
    match text.trim().parse::<f64>() {
        Ok(c) if c.is_finite() && c > 0.0 => Ok(c),
        _ => Err(crate::model::budget::AmountError(format!("{text:?} is not a number of dollars greater than 0"))),
    }
}
