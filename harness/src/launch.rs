//! The shapes every harness's launch shares: the [`Sandbox`] and other
//! [`Options`] it is given, and the [`Launch`] it answers with (its argv,
//! its [`Input`]), plus [`Delivery`], how a message reaches a running agent.
//! Each CLI's own command line lives in its module, reached through
//! [`crate::Harness`] (see [`crate::harness`] for the table of them all).

use serde::{Deserialize, Serialize};

/// What an agent may write, least to most permissive (so a child's
/// sandbox can be compared with its parent's). The supervisor enforces it
/// for every CLI (Landlock); each CLI also applies it by its own means
/// where it has them: Codex's `--sandbox`; Claude Code without its writing
/// tools when read-only. Arguments that would lift a CLI's own sandbox
/// above it are refused ([`crate::Harness::widening_arg`]).
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
    /// The supervisor confines the agent's file system itself (Landlock),
    /// around the CLI: a CLI whose own sandbox cannot start inside that
    /// (Codex's bubblewrap needs mounts, which Landlock forbids) leaves the
    /// confining to the supervisor.
    pub confined: bool,
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
    /// On stdin, a turn each: Claude Code's JSON user message line, Aider's
    /// input line; the CLI queues it for its next turn.
    Stdin,
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

/// `flag VALUE` or `flag=VALUE` at `args[i]`: the value, if `args[i]` is
/// `flag` in either form.
pub(crate) fn flag_value<'a>(args: &'a [String], i: usize, flag: &str) -> Option<&'a str> {
    let arg = args.get(i)?;
    if arg == flag {
        return args.get(i + 1).map(String::as_str);
    }
    arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('='))
}

/// Copies the files `names` (and folders, whole) that exist in `source`
/// into `target`, keeping what `target` already has: a CLI's settings for
/// its private state folder.
pub(crate) fn seed(source: &std::path::Path, target: &std::path::Path, names: &[&str]) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    for name in names {
        copy_missing(&source.join(name), &target.join(name))?;
    }
    Ok(())
}

fn copy_missing(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    let Ok(metadata) = std::fs::metadata(from) else { return Ok(()) };
    let failed = |e: std::io::Error| format!("cannot copy {} to {}: {e}", from.display(), to.display());
    if metadata.is_dir() {
        std::fs::create_dir_all(to).map_err(failed)?;
        for entry in std::fs::read_dir(from).map_err(failed)?.flatten() {
            copy_missing(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if !to.exists() {
        std::fs::copy(from, to).map_err(failed)?;
    }
    Ok(())
}

/// `$NAME` of `env` as a folder, else `$HOME/default` (`None` without either).
pub(crate) fn config_folder(
    env: &std::collections::BTreeMap<String, String>,
    name: &str,
    default: &str,
) -> Option<std::path::PathBuf> {
    match env.get(name).filter(|v| !v.is_empty()) {
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None => env.get("HOME").filter(|v| !v.is_empty()).map(|home| std::path::Path::new(home).join(default)),
    }
}
