//! How each agent CLI is started and spoken to: its headless command line,
//! where its input comes from, and how a message reaches it.
//!
//! | harness | command | input | a message is |
//! |---|---|---|---|
//! | claude | `claude -p --output-format stream-json --verbose --include-partial-messages --input-format stream-json --permission-mode acceptEdits` | a pipe; the task is the first JSON user message | a JSON user message on stdin |
//! | codex | `codex exec --json --skip-git-repo-check ... TASK` | none (`/dev/null`: it waits for stdin otherwise) | a new process once the turn ends: `codex exec ... resume THREAD MESSAGE` |
//! | gemini | `gemini --output-format stream-json ... -p TASK` | none | not deliverable |
//! | opencode | `opencode run --format json ... TASK` | none | not deliverable |
//! | aider | `aider --yes-always --no-pretty ... --message TASK` | none | not deliverable |
//! | generic | the command given | the PTY | typed into the PTY |
//!
//! Structured (JSON-lines) harnesses run in a raw PTY without echo, so
//! their output passes unchanged and nothing is echoed into it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The harnesses corral knows.
pub const HARNESSES: &[&str] = &["claude", "codex", "gemini", "opencode", "aider", "generic"];

/// `Ok` for a known harness name; else the message every caller shows
/// (the command line, corral.toml, MCP and the daemon say it alike).
pub fn check_harness(name: &str) -> Result<(), String> {
    if HARNESSES.contains(&name) {
        Ok(())
    } else {
        Err(format!("unknown harness {name:?} (expected one of: {})", HARNESSES.join(", ")))
    }
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
    /// session ([`resume_argv`]).
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

/// The environment variable that names a harness's binary (else its usual
/// name on PATH).
pub fn program_variable(harness: &str) -> Option<&'static str> {
    Some(match harness {
        "claude" => "CORRAL_CLAUDE_BIN",
        "codex" => "CORRAL_CODEX_BIN",
        "gemini" => "CORRAL_GEMINI_BIN",
        "opencode" => "CORRAL_OPENCODE_BIN",
        "aider" => "CORRAL_AIDER_BIN",
        _ => return None,
    })
}

/// True for CLIs that end each task with a result line (success or
/// error); their agents succeed only on a successful result.
pub fn reports_results(harness: &str) -> bool {
    matches!(harness, "claude" | "codex" | "gemini" | "opencode")
}

/// How messages reach an agent of this harness.
pub fn delivery(harness: &str) -> Delivery {
    match harness {
        "claude" => Delivery::StdinJson,
        "generic" => Delivery::TypeIntoPty,
        "codex" => Delivery::Resume,
        "gemini" => Delivery::Refuse("gemini -p takes no input while it runs"),
        "opencode" => Delivery::Refuse("opencode run takes no input while it runs"),
        "aider" => Delivery::Refuse("aider --message takes no input while it runs"),
        _ => Delivery::Refuse("unknown harness"),
    }
}

/// The command that continues session `session` with `text`, from the
/// agent's launch command: for codex, the `exec` options stay and the task
/// gives way to `resume SESSION TEXT`.
pub fn resume_argv(launch_argv: &[String], session: &str, text: &str) -> Vec<String> {
    let mut argv = launch_argv[..launch_argv.len().saturating_sub(1)].to_vec();
    argv.extend(["resume".to_string(), session.to_string(), text.to_string()]);
    argv
}

/// The line written to an agent's input to deliver `text`.
pub fn message_input(harness: &str, text: &str, session_id: Option<&str>) -> String {
    match harness {
        "claude" => format!("{}\n", crate::claude::user_message_line(text, session_id)),
        _ => format!("{text}\r"),
    }
}

fn push(argv: &mut Vec<String>, args: &[&str]) {
    argv.extend(args.iter().map(|a| a.to_string()));
}

/// The arguments that apply a sandbox and a reasoning effort to a CLI.
fn option_args(harness: &str, options: &Options) -> Vec<String> {
    let mut args = Vec::new();
    match (harness, options.sandbox) {
        ("codex", Some(sandbox)) => {
            let mode = match sandbox {
                Sandbox::ReadOnly => "read-only",
                Sandbox::WorkspaceWrite => "workspace-write",
                Sandbox::Full => "danger-full-access",
            };
            push(&mut args, &["--sandbox", mode]);
        }
        ("claude", Some(Sandbox::ReadOnly)) => {
            push(&mut args, &["--disallowedTools", "Write,Edit,MultiEdit,NotebookEdit,Bash"])
        }
        _ => {}
    }
    if let ("codex", Some(effort)) = (harness, options.reasoning_effort) {
        push(&mut args, &["-c", &format!("model_reasoning_effort={effort}")]);
    }
    args
}

/// The command line and first input of an ended agent's next run with
/// `task`, continuing its session where the CLI can (`claude --resume`,
/// `codex exec resume`); the other structured CLIs take the task as their
/// last argument; a plain command runs again as it was.
pub fn next_task(
    harness: &str,
    launch_argv: &[String],
    session: Option<&str>,
    task: &str,
) -> (Vec<String>, Option<String>) {
    match (harness, session) {
        ("claude", session) => {
            let mut argv = launch_argv.to_vec();
            if let Some(session) = session {
                push(&mut argv, &["--resume", session]);
            }
            (argv, Some(message_input("claude", task, None)))
        }
        ("codex", Some(session)) => (resume_argv(launch_argv, session, task), None),
        ("codex" | "gemini" | "opencode" | "aider", _) => {
            let mut argv = launch_argv[..launch_argv.len().saturating_sub(1)].to_vec();
            argv.push(task.to_string());
            (argv, None)
        }
        _ => (launch_argv.to_vec(), None),
    }
}

/// Forks a Claude Code session for an agent that will run in `cwd`: the
/// arguments that start it from a copy of `session`. Claude Code keeps a
/// session in `<config dir>/projects/<working folder, separators as
/// '-'>/<id>.jsonl` and resumes only sessions of the folder it runs in, so
/// the session file is copied under `cwd`'s folder first; `--fork-session`
/// then gives the child a session id of its own. `env` is the agent's
/// environment (`CLAUDE_CONFIG_DIR`, else `$HOME/.claude`).
pub fn fork_claude_session(env: &BTreeMap<String, String>, session: &str, cwd: &Path) -> Result<Vec<String>, String> {
    let config_dir = match env.get("CLAUDE_CONFIG_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env.get("HOME").cloned().unwrap_or_default()).join(".claude"),
    };
    let projects = config_dir.join("projects");
    let file = format!("{session}.jsonl");
    let found = std::fs::read_dir(&projects)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join(&file))
        .find(|path| path.exists())
        .ok_or_else(|| format!("no file of session {session} under {}", projects.display()))?;
    let folder: String =
        cwd.display().to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let target = projects.join(folder);
    std::fs::create_dir_all(&target)
        .and_then(|()| std::fs::copy(&found, target.join(&file)).map(|_| ()))
        .map_err(|e| format!("cannot copy the session: {e}"))?;
    Ok(vec!["--resume".into(), session.into(), "--fork-session".into()])
}

/// Builds the launch of `harness` for `task`. `program` is the CLI binary
/// (see [`program_variable`]); `extra` goes after corral's own arguments.
/// For `generic`, `extra` is the whole command.
pub fn launch(harness: &str, program: &str, task: &str, options: &Options, extra: &[String]) -> Result<Launch, String> {
    let model = options.model;
    let extra = &[option_args(harness, options), extra.to_vec()].concat();
    let mut argv = vec![program.to_string()];
    let structured = |argv: Vec<String>, input, first_input| Launch { argv, raw_pty: true, input, first_input };
    match harness {
        "claude" => {
            // Partial messages carry each call's exact output tokens as it
            // streams (the assistant lines only a start-of-message snapshot),
            // so token budgets act on true figures.
            push(&mut argv, &["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]);
            push(&mut argv, &["--input-format", "stream-json"]);
            push(&mut argv, &["--permission-mode", "acceptEdits"]);
            if let Some(model) = model {
                push(&mut argv, &["--model", model]);
            }
            argv.extend(extra.iter().cloned());
            let first = format!("{}\n", crate::claude::user_message_line(task, None));
            Ok(structured(argv, Input::Pipe, Some(first)))
        }
        "codex" => {
            push(&mut argv, &["exec", "--json", "--skip-git-repo-check"]);
            if let Some(model) = model {
                push(&mut argv, &["--model", model]);
            }
            argv.extend(extra.iter().cloned());
            argv.push(task.to_string());
            Ok(structured(argv, Input::Null, None))
        }
        "gemini" => {
            push(&mut argv, &["--output-format", "stream-json"]);
            if let Some(model) = model {
                push(&mut argv, &["--model", model]);
            }
            argv.extend(extra.iter().cloned());
            push(&mut argv, &["-p", task]);
            Ok(structured(argv, Input::Null, None))
        }
        "opencode" => {
            push(&mut argv, &["run", "--format", "json"]);
            if let Some(model) = model {
                push(&mut argv, &["--model", model]);
            }
            argv.extend(extra.iter().cloned());
            argv.push(task.to_string());
            Ok(structured(argv, Input::Null, None))
        }
        "aider" => {
            push(&mut argv, &["--yes-always", "--no-pretty", "--no-stream"]);
            if let Some(model) = model {
                push(&mut argv, &["--model", model]);
            }
            argv.extend(extra.iter().cloned());
            push(&mut argv, &["--message", task]);
            Ok(Launch { argv, raw_pty: false, input: Input::Null, first_input: None })
        }
        "generic" => {
            if extra.is_empty() {
                return Err("the generic harness needs a command: `corral spawn NAME -- COMMAND [ARGS]`".into());
            }
            Ok(Launch { argv: extra.to_vec(), raw_pty: false, input: Input::Pty, first_input: None })
        }
        other => Err(format!("unknown harness {other:?} (known: {})", HARNESSES.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claude_reads_its_task_from_stdin() {
        let launch = launch(
            "claude",
            "/bin/claude",
            "fix it",
            &Options { model: Some("sonnet"), ..Options::default() },
            &["--max-turns".into(), "3".into()],
        )
        .unwrap();
        assert_eq!(launch.input, Input::Pipe);
        assert!(launch.raw_pty);
        assert_eq!(&launch.argv[launch.argv.len() - 4..], ["--model", "sonnet", "--max-turns", "3"]);
        let first = launch.first_input.unwrap();
        assert!(first.ends_with('\n') && first.contains("\"fix it\""), "{first}");
    }

    #[test]
    fn codex_takes_the_task_last_and_no_stdin() {
        let launch = launch("codex", "codex", "do", &Options::default(), &["-c".into(), "model=x".into()]).unwrap();
        assert_eq!(launch.argv, ["codex", "exec", "--json", "--skip-git-repo-check", "-c", "model=x", "do"]);
        assert_eq!(launch.input, Input::Null);
        let resume = resume_argv(&launch.argv, "th-1", "more");
        assert_eq!(
            resume,
            ["codex", "exec", "--json", "--skip-git-repo-check", "-c", "model=x", "resume", "th-1", "more"]
        );
        assert_eq!(delivery("codex"), Delivery::Resume);
    }

    #[test]
    fn generic_needs_a_command_and_unknown_is_named() {
        assert!(launch("generic", "", "t", &Options::default(), &[]).unwrap_err().contains("needs a command"));
        assert!(launch("cursor", "", "t", &Options::default(), &[])
            .unwrap_err()
            .contains("unknown harness \"cursor\""));
        assert_eq!(delivery("claude"), Delivery::StdinJson);
    }

    #[test]
    fn sandbox_and_effort_reach_the_clis_that_take_them() {
        let options =
            Options { sandbox: Some(Sandbox::ReadOnly), reasoning_effort: Some("high"), ..Options::default() };
        let codex = launch("codex", "codex", "t", &options, &[]).unwrap().argv;
        assert_eq!(&codex[4..8], ["--sandbox", "read-only", "-c", "model_reasoning_effort=high"]);
        let claude = launch("claude", "claude", "t", &options, &[]).unwrap().argv;
        assert!(claude.windows(2).any(|w| w[0] == "--disallowedTools"), "{claude:?}");
        assert!(!claude.iter().any(|a| a.contains("reasoning")), "{claude:?}");
        let plain = launch("generic", "", "t", &options, &["true".into()]).unwrap().argv;
        assert_eq!(plain, ["true"]);
    }

    #[test]
    fn next_tasks_continue_the_session() {
        let codex = ["codex".to_string(), "exec".into(), "--json".into(), "first".into()];
        assert_eq!(
            next_task("codex", &codex, Some("th"), "second").0,
            ["codex", "exec", "--json", "resume", "th", "second"]
        );
        assert_eq!(next_task("codex", &codex, None, "second").0, ["codex", "exec", "--json", "second"]);
        let (argv, input) = next_task("claude", &["claude".to_string()], Some("s-1"), "again");
        assert_eq!(argv, ["claude", "--resume", "s-1"]);
        assert!(input.unwrap().contains("\"again\""));
    }
}
