//! The shapes every harness's launch shares: the [`Sandbox`] and other
//! [`Options`] it is given, and the [`Launch`] it answers with (its argv,
//! its [`Input`]), plus [`Delivery`], how a message reaches a running agent.
//! Each CLI's own command line lives in its module, reached through
//! [`crate::Harness`] (see [`crate::harness`] for the table of them all).

use serde::{Deserialize, Serialize};

/// What an agent may write, least to most permissive (so a child's
/// sandbox can be compared with its parent's). Each CLI applies it by its
/// own means: Codex's `--sandbox`; Claude Code without its writing tools
/// when read-only. A plain command's sandbox is not enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sandbox {
    /// Reads anything, writes nothing.
    ReadOnly,
    /// Writes its own worktree only.
    WorkspaceWrite,
    /// No restriction.
    Full,
}

/// Settings any harness may be given; each applies what its CLI supports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    pub model: Option<&'a str>,
    pub sandbox: Option<Sandbox>,
    /// Codex's `model_reasoning_effort`; the other CLIs have no such setting.
    pub reasoning_effort: Option<&'a str>,
}

/// Where the agent's standard input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The PTY, like a terminal: keystrokes and `corral attach`.
    Pty,
    /// A pipe the supervisor writes to and closes when the task is done
    /// (closing is how a JSON-lines CLI learns there is nothing more).
    Pipe,
    /// Nothing (`/dev/null`).
    Null,
}

/// How a message from `corral send` reaches a running agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A JSON user message line on stdin (Claude Code stream-json input);
    /// the CLI queues it for its next turn.
    StdinJson,
    /// The text typed into the PTY, then Enter.
    TypeIntoPty,
    /// A follow-up process once the current one ends, continuing the same
    /// session ([`Harness::resume_argv`]).
    Resume,
    /// This harness takes no input while it runs; the reason says why.
    Refuse(&'static str),
}

/// Everything needed to start one agent with a harness.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub argv: Vec<String>,
    pub raw_pty: bool,
    pub input: Input,
    /// Written to the agent's input as soon as it starts.
    pub first_input: Option<String>,
}

/// `args` added to `argv`.
pub(crate) fn push(argv: &mut Vec<String>, args: &[&str]) {
    argv.extend(args.iter().map(|a| a.to_string()));
}

/// A launch command without its last argument, the task, for the CLIs
/// that take the task last.
pub(crate) fn without_task(launch_argv: &[String]) -> Vec<String> {
    launch_argv[..launch_argv.len().saturating_sub(1)].to_vec()
}

/// A launch command with `task` in place of its last argument.
pub(crate) fn with_task(launch_argv: &[String], task: &str) -> Vec<String> {
    let mut argv = without_task(launch_argv);
    argv.push(task.to_string());
    argv
}
