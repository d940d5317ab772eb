//! [`Harness`]: the agent CLIs corral knows, as a type. Each CLI's module
//! holds everything about it: its command line, its output parser and how a
//! message reaches it ([`crate::claude`], [`crate::codex`],
//! [`crate::gemini`], [`crate::opencode`], [`crate::aider`],
//! [`crate::generic`]). This module only names them and dispatches, one
//! `match self` per question, so no caller matches on harness names.
//!
//! | harness | command | input | a message is |
//! |---|---|---|---|
//! | claude | `claude -p --output-format stream-json --verbose --include-partial-messages --input-format stream-json --permission-mode acceptEdits` | a pipe; the task is the first JSON user message | a JSON user message on stdin |
//! | codex | `codex exec --json --skip-git-repo-check ... TASK` | none (`/dev/null`: it waits for stdin otherwise) | a new process once the turn ends: `codex exec ... resume THREAD MESSAGE` |
//! | gemini | `gemini --output-format stream-json --skip-trust ... -p TASK` | none | not deliverable |
//! | opencode | `opencode run --format json --title TITLE ... TASK` | none | a new process once the run ends: `opencode run ... --session SESSION MESSAGE` |
//! | aider | `aider --yes-always --no-pretty --no-fancy-input --no-stream --no-auto-commits ...` | a pipe; the task is the first input line | an input line (a `{corral` block for several lines) on stdin, read once the turn is over |
//! | generic | the command given | the PTY | typed into the PTY |
//!
//! Structured (JSON-lines) harnesses run in a raw PTY without echo, so
//! their output passes unchanged and nothing is echoed into it.
//!
//! A harness is written as its lowercase name everywhere: corral.toml, the
//! command line, MCP and the journal (`"harness":"claude"`); [`FromStr`],
//! [`fmt::Display`] and serde all use that name, and an unknown name gets
//! the one message of [`UnknownHarness`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::event::Parser;
use crate::launch::{Delivery, Launch, Options, Sandbox};
use crate::{aider, claude, codex, gemini, generic, opencode};

/// An agent CLI corral can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Harness {
    /// Claude Code: `claude -p`, stream-json out and in.
    Claude,
    /// Codex CLI: `codex exec --json`, one turn per process.
    Codex,
    /// Gemini CLI: `gemini -p --output-format stream-json`.
    Gemini,
    /// opencode: `opencode run --format json`.
    Opencode,
    /// Aider: `aider --message`, plain text out.
    Aider,
    /// Any command, run as given in a PTY.
    Generic,
}

/// A name that is no [`Harness`]. Its message is the one every caller
/// shows (the command line, corral.toml, MCP and the daemon say it alike).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown harness {name:?} (expected one of: {known})", known = Harness::ALL.map(Harness::as_str).join(", "))]
pub struct UnknownHarness {
    /// The name given.
    pub name: String,
}

impl Harness {
    /// Every harness, in the order they are listed to people.
    pub const ALL: [Harness; 6] =
        [Harness::Claude, Harness::Codex, Harness::Gemini, Harness::Opencode, Harness::Aider, Harness::Generic];

    /// The harness's name: lowercase, as written in corral.toml and the journal.
    pub const fn as_str(self) -> &'static str {
        match self {
            Harness::Claude => "claude",
            Harness::Codex => "codex",
            Harness::Gemini => "gemini",
            Harness::Opencode => "opencode",
            Harness::Aider => "aider",
            Harness::Generic => "generic",
        }
    }

    /// The environment variable that names the CLI's binary (else its
    /// usual name on PATH, which is [`Harness::as_str`]); `None` for
    /// `generic`, whose command is given whole.
    pub fn program_variable(self) -> Option<&'static str> {
        match self {
            Harness::Claude => Some(claude::PROGRAM_VARIABLE),
            Harness::Codex => Some(codex::PROGRAM_VARIABLE),
            Harness::Gemini => Some(gemini::PROGRAM_VARIABLE),
            Harness::Opencode => Some(opencode::PROGRAM_VARIABLE),
            Harness::Aider => Some(aider::PROGRAM_VARIABLE),
            Harness::Generic => None,
        }
    }

    /// The CLI binary to run for an agent whose environment is `env`: the
    /// [`Harness::program_variable`] set there, else the harness's name;
    /// empty for `generic` (its command is the whole `extra` of
    /// [`Harness::launch`]).
    pub fn program(self, env: &BTreeMap<String, String>) -> String {
        match self.program_variable() {
            Some(variable) => env.get(variable).cloned().unwrap_or_else(|| self.as_str().to_string()),
            None => String::new(),
        }
    }

    /// Builds the launch for `task`. `program` is the CLI binary (see
    /// [`Harness::program`]); `extra` goes after corral's own arguments.
    /// For `generic`, `extra` is the whole command, and an empty one is
    /// refused.
    pub fn launch(self, program: &str, task: &str, options: &Options, extra: &[String]) -> Result<Launch, String> {
        match self {
            Harness::Claude => Ok(claude::launch(program, task, options, extra)),
            Harness::Codex => Ok(codex::launch(program, task, options, extra)),
            Harness::Gemini => Ok(gemini::launch(program, task, options, extra)),
            Harness::Opencode => Ok(opencode::launch(program, task, options, extra)),
            Harness::Aider => Ok(aider::launch(program, task, options, extra)),
            Harness::Generic => generic::launch(extra),
        }
    }

    /// True for CLIs that end each task with a result line (success or
    /// error); their agents succeed only on a successful result.
    pub fn reports_results(self) -> bool {
        match self {
            Harness::Claude => claude::REPORTS_RESULTS,
            Harness::Codex => codex::REPORTS_RESULTS,
            Harness::Gemini => gemini::REPORTS_RESULTS,
            Harness::Opencode => opencode::REPORTS_RESULTS,
            Harness::Aider => aider::REPORTS_RESULTS,
            Harness::Generic => generic::REPORTS_RESULTS,
        }
    }

    /// How messages reach a running agent of this harness.
    pub fn delivery(self) -> Delivery {
        match self {
            Harness::Claude => claude::DELIVERY,
            Harness::Codex => codex::DELIVERY,
            Harness::Gemini => gemini::DELIVERY,
            Harness::Opencode => opencode::DELIVERY,
            Harness::Aider => aider::DELIVERY,
            Harness::Generic => generic::DELIVERY,
        }
    }

    /// What is written to a running agent's input to deliver `text` (its
    /// session id, when known, goes with it where the CLI wants one):
    /// `Some` exactly for the harnesses whose [`Harness::delivery`] is
    /// [`Delivery::Stdin`] or [`Delivery::TypeIntoPty`].
    pub fn message_input(self, text: &str, session_id: Option<&str>) -> Option<String> {
        match self {
            Harness::Claude => Some(claude::message_input(text, session_id)),
            Harness::Aider => Some(aider::message_input(text)),
            Harness::Generic => Some(generic::message_input(text)),
            Harness::Codex | Harness::Gemini | Harness::Opencode => None,
        }
    }

    /// The command that continues session `session` with `text`, from the
    /// agent's launch command: `Some` exactly for the harnesses whose
    /// [`Harness::delivery`] is [`Delivery::Resume`].
    pub fn resume_argv(self, launch_argv: &[String], session: &str, text: &str) -> Option<Vec<String>> {
        match self {
            Harness::Codex => Some(codex::resume_argv(launch_argv, session, text)),
            Harness::Opencode => Some(opencode::resume_argv(launch_argv, session, text)),
            Harness::Claude | Harness::Gemini | Harness::Aider | Harness::Generic => None,
        }
    }

    /// The command line and first input of an ended agent's next run with
    /// `task`, continuing its session where the CLI can (`claude --resume`,
    /// `codex exec resume`, `opencode run --session`); Aider starts again
    /// with the task as its first input; Gemini CLI takes the task as its
    /// last argument; a plain command runs again as it was.
    pub fn next_task(self, launch_argv: &[String], session: Option<&str>, task: &str) -> (Vec<String>, Option<String>) {
        match self {
            Harness::Claude => claude::next_task(launch_argv, session, task),
            Harness::Codex => codex::next_task(launch_argv, session, task),
            Harness::Gemini => gemini::next_task(launch_argv, task),
            Harness::Opencode => opencode::next_task(launch_argv, session, task),
            Harness::Aider => aider::next_task(launch_argv, task),
            Harness::Generic => generic::next_task(launch_argv),
        }
    }

    /// The arguments that start an agent running in `cwd` from a copy of
    /// session `session` (its environment `env` says where the CLI keeps
    /// sessions). Only Claude Code sessions can be forked: see
    /// [`claude::fork_session`].
    pub fn fork_session(
        self,
        env: &BTreeMap<String, String>,
        session: &str,
        cwd: &Path,
    ) -> Result<Vec<String>, String> {
        match self {
            Harness::Claude => claude::fork_session(env, session, cwd),
            Harness::Codex | Harness::Gemini | Harness::Opencode | Harness::Aider | Harness::Generic => {
                Err("only Claude Code sessions can be forked (use --harness claude)".into())
            }
        }
    }

    /// The first of `args` (arguments for the CLI besides corral's own)
    /// that would lift the CLI's own sandbox or approvals above `sandbox`,
    /// corral's sandbox for it, as written; `None` when there is none, or
    /// when `sandbox` is full. A plain command has no such arguments.
    pub fn widening_arg(self, sandbox: Sandbox, args: &[String]) -> Option<String> {
        if sandbox == Sandbox::Full {
            return None;
        }
        match self {
            Harness::Claude => claude::widening_arg(sandbox, args),
            Harness::Codex => codex::widening_arg(sandbox, args),
            Harness::Gemini => gemini::widening_arg(sandbox, args),
            Harness::Opencode | Harness::Aider | Harness::Generic => None,
        }
    }

    /// Points the CLI at a private state folder, `folder` (made already),
    /// seeded with the settings of the person's (never credentials), for an
    /// agent that runs in `cwd`: the environment variables to set. Claude
    /// Code's `CLAUDE_CONFIG_DIR`, Codex's `CODEX_HOME`, Gemini's
    /// `GEMINI_CLI_HOME`, opencode's XDG data, state and cache folders;
    /// none for Aider (it keeps its history in the worktree) and a plain
    /// command.
    pub fn private_state(
        self,
        env: &BTreeMap<String, String>,
        folder: &Path,
        cwd: &Path,
    ) -> Result<Vec<(String, String)>, String> {
        match self {
            Harness::Claude => claude::private_state(env, folder, cwd),
            Harness::Codex => codex::private_state(env, folder),
            Harness::Gemini => gemini::private_state(env, folder),
            Harness::Opencode => Ok(opencode::private_state(folder)),
            Harness::Aider | Harness::Generic => Ok(Vec::new()),
        }
    }

    /// The file besides its output where the CLI writes session `session`'s
    /// usage as it goes, for an agent whose environment is `env`: Gemini
    /// CLI's chat log ([`gemini::usage_log`]), which has each model call's
    /// tokens while its output has them only at the end; `None` for the
    /// others, and while the file is not there. Its lines go to
    /// [`Parser::feed_usage_log_line`].
    pub fn usage_log(self, env: &BTreeMap<String, String>, session: &str) -> Option<std::path::PathBuf> {
        match self {
            Harness::Gemini => gemini::usage_log(env, session),
            _ => None,
        }
    }

    /// A fresh parser of the CLI's output, one per agent; `None` for
    /// `generic`, whose output is not read for events (its
    /// [`generic::GenericParser`] would only repeat the lines).
    pub fn parser(self) -> Option<Box<dyn Parser>> {
        match self {
            Harness::Claude => Some(Box::new(claude::ClaudeParser::new())),
            Harness::Codex => Some(Box::new(codex::CodexParser::new())),
            Harness::Gemini => Some(Box::new(gemini::GeminiParser::new())),
            Harness::Opencode => Some(Box::new(opencode::OpencodeParser::new())),
            Harness::Aider => Some(Box::new(aider::AiderParser::new())),
            Harness::Generic => None,
        }
    }
}

/// A plain command is what an agent is when nothing says otherwise.
impl Default for Harness {
    fn default() -> Harness {
        Harness::Generic
    }
}

impl fmt::Display for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Harness {
    type Err = UnknownHarness;

    /// The harness of that exact lowercase name.
    fn from_str(name: &str) -> Result<Harness, UnknownHarness> {
        Harness::ALL.into_iter().find(|harness| harness.as_str() == name).ok_or(UnknownHarness { name: name.into() })
    }
}

impl Serialize for Harness {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Harness {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Harness, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::{Input, Sandbox};

    #[test]
    fn every_harness_round_trips_by_its_name() {
        for harness in Harness::ALL {
            let name = harness.to_string();
            assert_eq!(name, harness.as_str());
            assert_eq!(name, name.to_lowercase());
            assert_eq!(name.parse::<Harness>(), Ok(harness));
            let json = serde_json::to_string(&harness).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Harness>(&json).unwrap(), harness);
        }
        assert_eq!(Harness::ALL.map(Harness::as_str), ["claude", "codex", "gemini", "opencode", "aider", "generic"]);
    }

    #[test]
    fn an_unknown_name_gets_the_one_message() {
        let expected = "unknown harness \"cursor\" (expected one of: claude, codex, gemini, opencode, aider, generic)";
        assert_eq!("cursor".parse::<Harness>().unwrap_err().to_string(), expected);
        assert_eq!(serde_json::from_str::<Harness>("\"cursor\"").unwrap_err().to_string(), expected);
        assert!("Claude".parse::<Harness>().is_err());
        assert!("".parse::<Harness>().is_err());
    }

    #[test]
    fn a_journal_record_reads_the_same_with_the_enum() {
        #[derive(Serialize, Deserialize)]
        struct Record {
            harness: Harness,
        }
        let record: Record = serde_json::from_str(r#"{"harness":"claude"}"#).unwrap();
        assert_eq!(record.harness, Harness::Claude);
        assert_eq!(serde_json::to_string(&record).unwrap(), r#"{"harness":"claude"}"#);
    }

    #[test]
    fn each_delivery_has_its_means() {
        for harness in Harness::ALL {
            let delivery = harness.delivery();
            let types = matches!(delivery, Delivery::Stdin | Delivery::TypeIntoPty);
            assert_eq!(harness.message_input("hi", None).is_some(), types, "{harness}");
            let argv = ["x".to_string(), "task".into()];
            assert_eq!(harness.resume_argv(&argv, "s", "hi").is_some(), delivery == Delivery::Resume, "{harness}");
        }
        assert_eq!(Harness::Claude.delivery(), Delivery::Stdin);
        assert_eq!(Harness::Codex.delivery(), Delivery::Resume);
        assert_eq!(Harness::Opencode.delivery(), Delivery::Resume);
        assert_eq!(Harness::Aider.delivery(), Delivery::Stdin);
        assert_eq!(Harness::Generic.delivery(), Delivery::TypeIntoPty);
        assert_eq!(Harness::Generic.message_input("ls", None).unwrap(), "ls\r");
    }

    #[test]
    fn parsers_for_every_structured_cli_and_none_for_generic() {
        for harness in Harness::ALL {
            assert_eq!(harness.parser().is_some(), harness != Harness::Generic, "{harness}");
        }
        let results: Vec<_> = Harness::ALL.into_iter().filter(|h| h.reports_results()).collect();
        assert_eq!(results, [Harness::Claude, Harness::Codex, Harness::Gemini, Harness::Opencode, Harness::Aider]);
    }

    #[test]
    fn the_program_comes_from_the_agents_environment() {
        let env = BTreeMap::from([("CORRAL_CODEX_BIN".to_string(), "/opt/codex".to_string())]);
        assert_eq!(Harness::Codex.program(&env), "/opt/codex");
        assert_eq!(Harness::Claude.program(&env), "claude");
        assert_eq!(Harness::Generic.program(&env), "");
        assert_eq!(Harness::Aider.program_variable(), Some("CORRAL_AIDER_BIN"));
    }

    #[test]
    fn sandbox_and_effort_reach_the_clis_that_take_them() {
        let options =
            Options { sandbox: Some(Sandbox::ReadOnly), reasoning_effort: Some("high"), ..Options::default() };
        let codex = Harness::Codex.launch("codex", "t", &options, &[]).unwrap().argv;
        assert_eq!(&codex[4..8], ["--sandbox", "read-only", "-c", "model_reasoning_effort=high"]);
        let claude = Harness::Claude.launch("claude", "t", &options, &[]).unwrap().argv;
        assert!(claude.windows(2).any(|w| w[0] == "--disallowedTools"), "{claude:?}");
        assert!(!claude.iter().any(|a| a.contains("reasoning")), "{claude:?}");
        let plain = Harness::Generic.launch("", "t", &options, &["true".into()]).unwrap().argv;
        assert_eq!(plain, ["true"]);
    }

    #[test]
    fn the_task_is_the_last_argument_of_the_one_shot_clis() {
        for harness in [Harness::Gemini, Harness::Opencode] {
            let session = (harness == Harness::Gemini).then_some("s");
            let launch = harness.launch(harness.as_str(), "first", &Options::default(), &[]).unwrap();
            assert_eq!(launch.argv.last().map(String::as_str), Some("first"), "{harness}");
            assert_eq!(launch.input, Input::Null, "{harness}");
            let (argv, input) = harness.next_task(&launch.argv, session, "second");
            assert_eq!(argv[..argv.len() - 1], launch.argv[..launch.argv.len() - 1], "{harness}");
            assert_eq!(argv.last().map(String::as_str), Some("second"), "{harness}");
            assert_eq!(input, None);
        }
        let plain = ["make".to_string(), "test".into()];
        assert_eq!(Harness::Generic.next_task(&plain, None, "other"), (plain.to_vec(), None));
        // Aider takes its task, and the next one, as its first input line.
        let aider = Harness::Aider.launch("aider", "first", &Options::default(), &[]).unwrap();
        assert_eq!((aider.input, aider.first_input.as_deref()), (Input::Pipe, Some("first\n")));
        assert!(!aider.argv.contains(&"first".to_string()), "{:?}", aider.argv);
        assert_eq!(
            Harness::Aider.next_task(&aider.argv, None, "second"),
            (aider.argv.clone(), Some("second\n".into()))
        );
    }

    #[test]
    fn the_one_shot_clis_run_headless_with_every_model_call_reported() {
        let argv = |harness: Harness| harness.launch(harness.as_str(), "t", &Options::default(), &[]).unwrap().argv;
        assert!(argv(Harness::Gemini).contains(&"--skip-trust".to_string()));
        assert!(argv(Harness::Opencode).contains(&"--title=t".to_string()));
        let aider = argv(Harness::Aider);
        for flag in ["--no-stream", "--no-auto-commits", "--no-dirty-commits", "--no-analytics", "--no-fancy-input"] {
            assert!(aider.contains(&flag.to_string()), "{flag}: {aider:?}");
        }
    }

    #[test]
    fn only_claude_sessions_fork() {
        let err = Harness::Codex.fork_session(&BTreeMap::new(), "s", Path::new("/w")).unwrap_err();
        assert!(err.contains("only Claude Code sessions"), "{err}");
    }

    #[test]
    fn arguments_that_lift_a_clis_own_sandbox_are_named() {
        let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let widening = |harness: Harness, sandbox: Sandbox, list: &[&str]| harness.widening_arg(sandbox, &args(list));
        let ww = Sandbox::WorkspaceWrite;
        assert_eq!(
            widening(Harness::Codex, ww, &["--dangerously-bypass-approvals-and-sandbox"]).as_deref(),
            Some("--dangerously-bypass-approvals-and-sandbox")
        );
        assert_eq!(
            widening(Harness::Codex, ww, &["-s", "danger-full-access"]).as_deref(),
            Some("-s danger-full-access")
        );
        assert_eq!(widening(Harness::Codex, ww, &["--sandbox=read-only"]), None, "narrower is fine");
        assert_eq!(
            widening(Harness::Codex, Sandbox::ReadOnly, &["-c", "sandbox_mode=\"workspace-write\""]).as_deref(),
            Some("-c sandbox_mode=\"workspace-write\"")
        );
        assert_eq!(widening(Harness::Codex, Sandbox::ReadOnly, &["--full-auto"]).as_deref(), Some("--full-auto"));
        assert_eq!(widening(Harness::Codex, ww, &["--full-auto", "-c", "model=o3"]), None);
        assert_eq!(
            widening(Harness::Claude, ww, &["--permission-mode=bypassPermissions"]).as_deref(),
            Some("--permission-mode bypassPermissions")
        );
        assert_eq!(widening(Harness::Gemini, ww, &["--yolo"]).as_deref(), Some("--yolo"));
        assert_eq!(widening(Harness::Gemini, ww, &["--approval-mode", "auto_edit"]), None);
        // Under a full sandbox, and for a plain command, nothing is refused.
        assert_eq!(widening(Harness::Codex, Sandbox::Full, &["--dangerously-bypass-approvals-and-sandbox"]), None);
        assert_eq!(widening(Harness::Generic, ww, &["--yolo"]), None);
    }

    #[test]
    fn codex_leaves_the_confining_to_corral_inside_its_sandbox() {
        let options = Options { sandbox: Some(Sandbox::WorkspaceWrite), confined: true, ..Options::default() };
        let argv = Harness::Codex.launch("codex", "t", &options, &[]).unwrap().argv;
        let at = argv.iter().position(|a| a == "--sandbox").expect("--sandbox");
        assert_eq!(argv[at + 1..at + 3], ["workspace-write", "--dangerously-bypass-approvals-and-sandbox"]);
        let free = Options { sandbox: Some(Sandbox::WorkspaceWrite), ..Options::default() };
        let argv = Harness::Codex.launch("codex", "t", &free, &[]).unwrap().argv;
        assert!(!argv.iter().any(|a| a.starts_with("--dangerously")), "{argv:?}");
    }

    #[test]
    fn a_private_state_folder_is_seeded_with_settings_and_no_credentials() {
        let root = tempfile::tempdir().unwrap();
        let person = root.path().join("person");
        std::fs::create_dir_all(person.join(".claude/projects/-w-api")).unwrap();
        std::fs::write(person.join(".claude/settings.json"), "{}").unwrap();
        std::fs::write(person.join(".claude/.credentials.json"), "secret").unwrap();
        std::fs::write(person.join(".claude/projects/-w-api/s.jsonl"), "{}").unwrap();
        std::fs::write(person.join(".claude/projects/-w-other.jsonl"), "{}").unwrap();
        let env = BTreeMap::from([("HOME".to_string(), person.display().to_string())]);
        let folder = root.path().join("agent");
        let set = Harness::Claude.private_state(&env, &folder, Path::new("/w/api")).unwrap();
        assert_eq!(set, vec![("CLAUDE_CONFIG_DIR".to_string(), folder.display().to_string())]);
        assert!(folder.join("settings.json").exists() && folder.join("projects/-w-api/s.jsonl").exists());
        assert!(!folder.join(".credentials.json").exists(), "credentials are never copied");
        assert!(!folder.join("projects/-w-other.jsonl").exists(), "only the sessions of its own folder");

        std::fs::create_dir_all(person.join(".codex")).unwrap();
        std::fs::write(person.join(".codex/config.toml"), "model = \"o3\"").unwrap();
        std::fs::write(person.join(".codex/auth.json"), "secret").unwrap();
        let folder = root.path().join("codex-agent");
        let set = Harness::Codex.private_state(&env, &folder, Path::new("/w/api")).unwrap();
        assert_eq!(set[0].0, "CODEX_HOME");
        assert!(folder.join("config.toml").exists() && !folder.join("auth.json").exists());
        assert!(Harness::Generic.private_state(&env, &folder, Path::new("/w")).unwrap().is_empty());
    }
}
