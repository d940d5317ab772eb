//! Codex CLI in its headless structured mode, all of it: how corral starts
//! it, how a message reaches it, and how its output reads.
//!
//! - Launch: `codex exec --json --skip-git-repo-check [--model M]
//!   [--sandbox MODE] [-c model_reasoning_effort=E] EXTRA TASK`, its stdin
//!   `/dev/null` (it waits for stdin otherwise). The sandbox is Codex's own
//!   `--sandbox`; when the supervisor confines the agent with Landlock
//!   ([`Options::confined`]), where Codex's bubblewrap cannot start, also
//!   `--dangerously-bypass-approvals-and-sandbox`: the mode is then the
//!   supervisor's to enforce.
//! - Delivery: `codex exec` runs one turn and takes no input, so a message
//!   is a follow-up process once the turn ends, continuing the thread: the
//!   same command with `resume <thread_id> MESSAGE` in place of the task
//!   ([`resume_argv`]); a new task for an ended agent runs the same way.
//! - Output: its JSON lines become [`HarnessEvent`]s, and [`CodexParser`]
//!   keeps the agent's token usage. Codex reports no cost:
//!   [`Parser::totals`] has `cost_usd: None`; price the tokens by model.
//!
//! Lines and what they become:
//!
//! - `thread.started` → `SessionStarted` with the thread id (every process
//!   prints one; a resumed process prints the same id).
//! - `item.started` of a `command_execution`, `file_change`,
//!   `mcp_tool_call` (named `mcp__<server>__<tool>` like Claude Code's MCP
//!   tools), `web_search` or `collab_tool_call` → `ToolUse`; its
//!   `item.completed` → `ToolResult` (preceded by the `ToolUse` when no
//!   `item.started` was seen, as for a `file_change` older versions only
//!   print completed). A command fails when its status is `failed` or
//!   `declined` or its exit code is not 0.
//! - `item.completed` of an `agent_message`, `reasoning` or `plan` →
//!   `Progress`; of an `error` item (non-fatal, for example an unknown model
//!   name) → `Progress` "error: ..."; a `todo_list` → `Progress` "plan: \[x\]
//!   ..." when it starts or changes.
//! - `turn.completed` → a settled `Usage`, then a successful `Result` whose
//!   text is the turn's last agent message (`codex exec` runs one turn per
//!   process).
//! - `turn.failed` → a failed `Result` (reason `turn_failed`, text the error).
//! - `error`: outside a turn (a startup failure) → a failed `Result` (reason
//!   `error`); inside a turn → `Progress` "error: ..." only. This refines the
//!   first brief ("`error` → failed Result"): Codex also prints `error` for
//!   a stream it is about to retry ("Reconnecting... 1/5"), and a turn that
//!   really fails ends with `turn.failed`, which carries the message (Codex
//!   falls back to the last `error` there itself). So the last `Result` of a
//!   process is its outcome, and a retried hiccup does not look like one.
//! - Unknown types and items, and JSON of the wrong shape, are ignored;
//!   non-JSON lines as described in [`crate::event`].
//!
//! ## Token mapping
//!
//! `usage.input_tokens` includes `cached_input_tokens` (OpenAI convention:
//! codex's own `non_cached_input()` is `input_tokens - cached_input`), so
//! `input = input_tokens - cached_input_tokens` and `cache_read =
//! cached_input_tokens`. `output = output_tokens`: in OpenAI's usage,
//! reasoning tokens are a breakdown *of* the output tokens
//! (`output_tokens_details.reasoning_tokens`), and codex's `blended_total()`
//! is `non_cached_input + output_tokens` with nothing added for reasoning;
//! adding `reasoning_output_tokens` would count them twice. A
//! `cache_write_input_tokens` field, printed by some versions, is ignored:
//! those tokens are already inside `input_tokens` and OpenAI bills no cache
//! write.
//!
//! ## Resumed turns: `turn.completed.usage` is cumulative for the thread
//!
//! Evidence from the openai/codex source: `codex-rs/exec/src/
//! event_processor_with_jsonl_output.rs` fills `turn.completed.usage` from
//! `usage_from_last_total()`, i.e. `ThreadTokenUsage.total` (the running
//! total of the thread, not `.last`; openai/codex#17539 asks for the
//! per-call figure because of this). On `codex exec resume`,
//! `codex-rs/core/src/session/mod.rs` seeds the session's token info from the
//! rollout ("Seed usage info from the recorded rollout so UIs can show token
//! counts immediately on resume/fork": `last_token_info_from_rollout` →
//! `set_token_info`), so a resumed process keeps adding to the thread's
//! earlier total. Summing `turn.completed` figures would count every earlier
//! turn again at each resume.
//!
//! So the parser (one per agent, kept across the processes) remembers the
//! last figures per thread id and counts only their growth. It stays right
//! the other way too: figures lower than the last ones for the thread (a
//! version that does not seed, or a rollout that lost its token counts)
//! count in full, and a new thread id (a fresh `codex exec`) starts from
//! zero. A process killed mid-turn prints no `turn.completed`; its spend
//! shows up in the next resumed process's figures, which include it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::event::{
    json_count, one_line, parse_object, progress, result_text, summarize_input, summarize_output, Cumulative,
    HarnessEvent, Ledger, Parser, TokenUsage, UsageTotals, SUMMARY_MAX_CHARS,
};
use crate::launch::{config_folder, flag_value, push, seed, without_task, Delivery, Input, Launch, Options, Sandbox};

// ---------------------------------------------------------------------------
// Launch and delivery.
// ---------------------------------------------------------------------------

/// The environment variable that names the `codex` binary.
pub(crate) const PROGRAM_VARIABLE: &str = "CORRAL_CODEX_BIN";

/// Every turn ends with `turn.completed` or `turn.failed`.
pub(crate) const REPORTS_RESULTS: bool = true;

/// Messages go to a follow-up process that resumes the thread.
pub(crate) const DELIVERY: Delivery = Delivery::Resume;

/// The launch of `program` for `task`; `extra` goes after corral's own
/// arguments, the task last.
pub(crate) fn launch(program: &str, task: &str, options: &Options, extra: &[String]) -> Launch {
    let mut argv = vec![program.to_string()];
    push(&mut argv, &["exec", "--json", "--skip-git-repo-check"]);
    if let Some(model) = options.model {
        push(&mut argv, &["--model", model]);
    }
    if let Some(sandbox) = options.sandbox {
        let mode = match sandbox {
            Sandbox::ReadOnly => "read-only",
            Sandbox::WorkspaceWrite => "workspace-write",
            Sandbox::Full => "danger-full-access",
        };
        push(&mut argv, &["--sandbox", mode]);
        // Codex's own sandbox (bubblewrap) cannot start inside the
        // supervisor's Landlock, which forbids mounts: every command would
        // fail. Codex then runs its commands as they are, inside it.
        if options.confined {
            push(&mut argv, &["--dangerously-bypass-approvals-and-sandbox"]);
        }
    }
    if let Some(effort) = options.reasoning_effort {
        push(&mut argv, &["-c", &format!("model_reasoning_effort={effort}")]);
    }
    argv.extend_from_slice(extra);
    // After `--`: a task that starts with `-` is a prompt, not a flag.
    push(&mut argv, &["--", task]);
    Launch { argv, raw_pty: true, input: Input::Null, first_input: None }
}

/// The launch command's options: without the task, and the `--` before
/// it (a launch from before it had one has none).
fn options_of(launch_argv: &[String]) -> Vec<String> {
    let mut argv = without_task(launch_argv);
    if argv.last().is_some_and(|a| a == "--") {
        argv.pop();
    }
    argv
}

/// The first of `args` that would lift Codex's own sandbox above `sandbox`
/// (`--dangerously-bypass-approvals-and-sandbox`, a wider `--sandbox` or
/// `-c sandbox_mode=`, `--full-auto` under read-only), as written.
pub(crate) fn widening_arg(sandbox: Sandbox, args: &[String]) -> Option<String> {
    let wider = |mode: &str| {
        let mode = mode.trim_matches(|c| c == '"' || c == '\'');
        let rank = match mode {
            "read-only" => Sandbox::ReadOnly,
            "workspace-write" => Sandbox::WorkspaceWrite,
            "danger-full-access" => Sandbox::Full,
            _ => return false,
        };
        rank > sandbox
    };
    for (i, arg) in args.iter().enumerate() {
        match arg.as_str() {
            "--dangerously-bypass-approvals-and-sandbox" | "--yolo" => return Some(arg.clone()),
            "--full-auto" if sandbox < Sandbox::WorkspaceWrite => return Some(arg.clone()),
            _ => {}
        }
        for flag in ["--sandbox", "-s"] {
            if let Some(mode) = flag_value(args, i, flag).filter(|m| wider(m)) {
                return Some(format!("{flag} {mode}"));
            }
        }
        for flag in ["-c", "--config"] {
            let setting = flag_value(args, i, flag).and_then(|kv| kv.split_once('='));
            if let Some((_, mode)) = setting.filter(|(key, mode)| key.trim() == "sandbox_mode" && wider(mode)) {
                return Some(format!("{flag} sandbox_mode={mode}"));
            }
        }
    }
    None
}

/// Gives Codex the private state folder `folder` (`CODEX_HOME`), seeded
/// with the person's `config.toml` and `AGENTS.md` (from `$CODEX_HOME`,
/// else `~/.codex`), never `auth.json`. Its sessions stay there for the
/// agent's life (`codex exec resume` reads them).
pub(crate) fn private_state(env: &BTreeMap<String, String>, folder: &Path) -> Result<Vec<(String, String)>, String> {
    if let Some(source) = config_folder(env, "CODEX_HOME", ".codex") {
        seed(&source, folder, &["config.toml", "AGENTS.md"])?;
    }
    Ok(vec![("CODEX_HOME".into(), folder.display().to_string())])
}

/// The command that continues thread `session` with `text`, from the
/// agent's launch command: the `exec` options stay and the task gives way
/// to `resume SESSION TEXT`.
pub fn resume_argv(launch_argv: &[String], session: &str, text: &str) -> Vec<String> {
    let mut argv = options_of(launch_argv);
    push(&mut argv, &["resume", session, "--", text]);
    argv
}

/// An ended agent's next run with `task`: resuming its thread when it has
/// one, else the launch command with the new task.
pub(crate) fn next_task(launch_argv: &[String], session: Option<&str>, task: &str) -> (Vec<String>, Option<String>) {
    match session {
        Some(session) => (resume_argv(launch_argv, session, task), None),
        None => {
            let mut argv = options_of(launch_argv);
            push(&mut argv, &["--", task]);
            (argv, None)
        }
    }
}

/// Items in flight kept at most (ids are per process; a runaway process
/// starts over rather than growing without bound).
const MAX_STARTED_ITEMS: usize = 100_000;

/// Parser for `codex exec --json` output. One per agent, across resumes.
#[derive(Debug, Default)]
pub struct CodexParser {
    ledger: Ledger,
    cumulative: Cumulative,
    thread_id: Option<String>,
    in_turn: bool,
    /// Items whose `item.started` was reported as a ToolUse.
    started: HashSet<String>,
    last_agent_message: Option<String>,
    last_error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: Option<Value>,
    thread_id: Option<Value>,
    item: Option<Value>,
    usage: Option<Value>,
    error: Option<Value>,
    message: Option<Value>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// `turn.completed.usage` → tokens (see the module doc for the mapping).
pub(crate) fn codex_usage(usage: &Value) -> TokenUsage {
    let input = json_count(usage.get("input_tokens"));
    let cached = json_count(usage.get("cached_input_tokens"));
    TokenUsage {
        input: input.saturating_sub(cached),
        output: json_count(usage.get("output_tokens")),
        cache_read: cached,
        cache_write: 0,
    }
}

impl CodexParser {
    pub fn new() -> Self {
        Self::default()
    }

    fn on_thread_started(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let thread_id = line.thread_id.as_ref().and_then(Value::as_str).map(str::to_owned);
        // A new process: item ids start again at item_0.
        self.started.clear();
        self.in_turn = false;
        self.thread_id = thread_id.clone();
        vec![HarnessEvent::SessionStarted { session_id: thread_id, model: None }]
    }

    fn on_item(&mut self, phase: &str, item: &Value) -> Vec<HarnessEvent> {
        let kind = str_field(item, "type").unwrap_or("");
        let id = str_field(item, "id").map(str::to_owned);
        let mut events = Vec::new();
        match (phase, kind) {
            ("completed", "agent_message") => {
                if let Some(text) = str_field(item, "text") {
                    events.extend(progress(text));
                    self.last_agent_message = result_text(text);
                }
            }
            ("completed", "reasoning" | "plan") => {
                events.extend(str_field(item, "text").and_then(progress));
            }
            ("completed", "error") => {
                if let Some(message) = str_field(item, "message") {
                    events.extend(progress(&format!("error: {message}")));
                }
            }
            ("started" | "updated", "todo_list") => {
                events.extend(todo_progress(item));
            }
            ("started", _) => {
                if let Some((name, summary)) = tool_use(kind, item) {
                    if let Some(id) = &id {
                        if self.started.len() >= MAX_STARTED_ITEMS {
                            self.started.clear();
                        }
                        self.started.insert(id.clone());
                    }
                    events.push(HarnessEvent::ToolUse { id, name, summary });
                }
            }
            ("completed", _) => {
                if let Some((name, summary)) = tool_use(kind, item) {
                    let was_started = id.as_ref().is_some_and(|id| self.started.remove(id));
                    if !was_started {
                        events.push(HarnessEvent::ToolUse { id: id.clone(), name, summary });
                    }
                    let (is_error, summary) = tool_result(kind, item);
                    events.push(HarnessEvent::ToolResult { id, is_error, summary });
                }
            }
            _ => {}
        }
        events
    }

    fn on_turn_completed(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let mut events = Vec::new();
        if let Some(usage) = line.usage.as_ref().filter(|u| u.is_object()) {
            let scope = self.thread_id.as_deref().unwrap_or("");
            let (growth, _) = self.cumulative.advance(scope, Some(codex_usage(usage)), None);
            let total = self.ledger.total().saturating_add(growth);
            events.extend(self.ledger.set(total, None, true, true));
        }
        self.in_turn = false;
        events.push(HarnessEvent::Result {
            success: true,
            reason: None,
            text: self.last_agent_message.take(),
            session_id: self.thread_id.clone(),
        });
        events
    }

    fn on_turn_failed(&mut self, line: &Line) -> Vec<HarnessEvent> {
        self.in_turn = false;
        let message = line
            .error
            .as_ref()
            .and_then(|e| str_field(e, "message"))
            .and_then(result_text)
            .or_else(|| self.last_error.take());
        vec![HarnessEvent::Result {
            success: false,
            reason: Some("turn_failed".to_owned()),
            text: message,
            session_id: self.thread_id.clone(),
        }]
    }

    fn on_error(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let message = line.message.as_ref().and_then(Value::as_str).unwrap_or("error");
        if self.in_turn {
            self.last_error = result_text(message);
            return progress(&format!("error: {message}")).into_iter().collect();
        }
        vec![HarnessEvent::Result {
            success: false,
            reason: Some("error".to_owned()),
            text: result_text(message),
            session_id: self.thread_id.clone(),
        }]
    }
}

/// Name and input summary when the item is a tool call.
fn tool_use(kind: &str, item: &Value) -> Option<(String, String)> {
    match kind {
        "command_execution" => Some((
            "command_execution".to_owned(),
            str_field(item, "command").map(|c| one_line(c, SUMMARY_MAX_CHARS)).unwrap_or_default(),
        )),
        "file_change" => Some(("file_change".to_owned(), file_changes(item))),
        "mcp_tool_call" => {
            let server = str_field(item, "server").unwrap_or("mcp");
            let tool = str_field(item, "tool").unwrap_or("tool");
            Some((format!("mcp__{server}__{tool}"), item.get("arguments").map(summarize_input).unwrap_or_default()))
        }
        "web_search" => Some((
            "web_search".to_owned(),
            str_field(item, "query").map(|q| one_line(q, SUMMARY_MAX_CHARS)).unwrap_or_default(),
        )),
        "collab_tool_call" => Some((
            str_field(item, "tool").unwrap_or("collab_tool_call").to_owned(),
            str_field(item, "prompt").map(|p| one_line(p, SUMMARY_MAX_CHARS)).unwrap_or_default(),
        )),
        _ => None,
    }
}

/// Whether the completed tool item failed, and a one-line summary of it.
fn tool_result(kind: &str, item: &Value) -> (bool, String) {
    let status = str_field(item, "status").unwrap_or("");
    let failed_status = matches!(status, "failed" | "declined");
    match kind {
        "command_execution" => {
            let exit = item.get("exit_code").and_then(Value::as_i64);
            let output = str_field(item, "aggregated_output").unwrap_or("");
            let head = match exit {
                Some(code) => format!("exit {code}"),
                None => status.to_owned(),
            };
            let summary = if output.trim().is_empty() {
                head
            } else {
                // Look at a bounded prefix: outputs can be megabytes.
                let prefix = output.char_indices().nth(SUMMARY_MAX_CHARS * 2).map_or(output, |(i, _)| &output[..i]);
                one_line(&format!("{head}: {prefix}"), SUMMARY_MAX_CHARS)
            };
            (failed_status || exit.is_some_and(|c| c != 0), summary)
        }
        "file_change" => (failed_status, file_changes(item)),
        "mcp_tool_call" => match item.get("error").and_then(|e| str_field(e, "message")) {
            Some(message) => (true, one_line(message, SUMMARY_MAX_CHARS)),
            None => (
                failed_status,
                item.get("result").and_then(|r| r.get("content")).map(summarize_output).unwrap_or_default(),
            ),
        },
        "web_search" => {
            (failed_status, str_field(item, "query").map(|q| one_line(q, SUMMARY_MAX_CHARS)).unwrap_or_default())
        }
        _ => (failed_status, status.to_owned()),
    }
}

/// "update a.rs, add b.rs" from a `file_change` item.
fn file_changes(item: &Value) -> String {
    let Some(changes) = item.get("changes").and_then(Value::as_array) else {
        return String::new();
    };
    let parts: Vec<String> = changes
        .iter()
        .take(20)
        .map(|c| format!("{} {}", str_field(c, "kind").unwrap_or("change"), str_field(c, "path").unwrap_or("?")))
        .collect();
    one_line(&parts.join(", "), SUMMARY_MAX_CHARS)
}

/// "plan: [x] a; [ ] b" from a `todo_list` item.
fn todo_progress(item: &Value) -> Option<HarnessEvent> {
    let items = item.get("items")?.as_array()?;
    let parts: Vec<String> = items
        .iter()
        .map(|i| {
            let done = i.get("completed").and_then(Value::as_bool) == Some(true);
            format!("[{}] {}", if done { "x" } else { " " }, str_field(i, "text").unwrap_or(""))
        })
        .collect();
    progress(&format!("plan: {}", parts.join("; ")))
}

impl Parser for CodexParser {
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        let parsed: Line = match parse_object(line) {
            Ok(parsed) => parsed,
            Err(events) => return events,
        };
        let kind = parsed.kind.as_ref().and_then(Value::as_str).unwrap_or("");
        match kind {
            "thread.started" => self.on_thread_started(&parsed),
            "turn.started" => {
                self.in_turn = true;
                self.last_agent_message = None;
                self.last_error = None;
                Vec::new()
            }
            "item.started" | "item.updated" | "item.completed" => match parsed.item.as_ref() {
                Some(item) if item.is_object() => {
                    let phase = &kind["item.".len()..];
                    self.on_item(phase, item)
                }
                _ => Vec::new(),
            },
            "turn.completed" => self.on_turn_completed(&parsed),
            "turn.failed" => self.on_turn_failed(&parsed),
            "error" => self.on_error(&parsed),
            _ => Vec::new(),
        }
    }

    fn totals(&self) -> UsageTotals {
        self.ledger.totals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Harness;

    #[test]
    fn codex_takes_the_task_last_and_no_stdin() {
        let launch =
            Harness::Codex.launch("codex", "do", &Options::default(), &["-c".into(), "model=x".into()]).unwrap();
        assert_eq!(launch.argv, ["codex", "exec", "--json", "--skip-git-repo-check", "-c", "model=x", "--", "do"]);
        assert_eq!(launch.input, Input::Null);
        let resume = Harness::Codex.resume_argv(&launch.argv, "th-1", "-v broke the tests").unwrap();
        assert_eq!(
            resume,
            [
                "codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "-c",
                "model=x",
                "resume",
                "th-1",
                "--",
                "-v broke the tests"
            ]
        );
        // A launch from before the `--` resumes the same way.
        let old: Vec<String> = ["codex", "exec", "--json", "do"].map(String::from).to_vec();
        assert_eq!(
            Harness::Codex.resume_argv(&old, "th-1", "more").unwrap(),
            ["codex", "exec", "--json", "resume", "th-1", "--", "more"]
        );
        assert_eq!(Harness::Codex.delivery(), Delivery::Resume);
    }

    #[test]
    fn next_tasks_continue_the_thread() {
        let codex = ["codex".to_string(), "exec".into(), "--json".into(), "first".into()];
        assert_eq!(
            Harness::Codex.next_task(&codex, Some("th"), "second").0,
            ["codex", "exec", "--json", "resume", "th", "--", "second"]
        );
        assert_eq!(Harness::Codex.next_task(&codex, None, "second").0, ["codex", "exec", "--json", "--", "second"]);
    }

    fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage { input, output, cache_read, cache_write }
    }

    fn feed(p: &mut CodexParser, line: &str) -> Vec<HarnessEvent> {
        p.feed_line(line.as_bytes())
    }

    fn turn(p: &mut CodexParser, input: u64, cached: u64, output: u64) -> Vec<HarnessEvent> {
        feed(p, r#"{"type":"turn.started"}"#);
        feed(
            p,
            &format!(
                r#"{{"type":"turn.completed","usage":{{"input_tokens":{input},"cached_input_tokens":{cached},"output_tokens":{output},"reasoning_output_tokens":7}}}}"#
            ),
        )
    }

    #[test]
    fn cached_input_is_split_out_of_input_and_reasoning_not_added() {
        let mut p = CodexParser::new();
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        let events = turn(&mut p, 1000, 600, 50);
        // input 1000 - cached 600 = 400; output 50 (reasoning 7 is inside it).
        assert_eq!(
            events[0],
            HarnessEvent::Usage { delta: t(400, 50, 600, 0), total: t(400, 50, 600, 0), cost_usd: None, settled: true }
        );
        assert_eq!(p.totals().cost_usd, None);
    }

    #[test]
    fn resumed_process_counts_only_growth_of_the_thread_total() {
        let mut p = CodexParser::new();
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        turn(&mut p, 1000, 600, 50);
        // `codex exec resume th1`: a new process, same thread, figures
        // restate the thread total (1000+1500, 600+1200, 50+30).
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        let events = turn(&mut p, 2500, 1800, 80);
        assert_eq!(
            events[0],
            HarnessEvent::Usage {
                // input (2500-1800)-(1000-600) = 300; output 30; cached 1200.
                delta: t(300, 30, 1200, 0),
                total: t(700, 80, 1800, 0),
                cost_usd: None,
                settled: true
            }
        );
    }

    #[test]
    fn per_process_figures_and_new_threads_count_in_full() {
        let mut p = CodexParser::new();
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        turn(&mut p, 1000, 600, 50);
        // A resume whose figures did not carry over (lower): counted in full.
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        turn(&mut p, 900, 800, 20);
        // (400,50,600) + (100,20,800)
        assert_eq!(p.totals().tokens, t(500, 70, 1400, 0));
        // A fresh thread starts from zero.
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th2"}"#);
        turn(&mut p, 10, 0, 1);
        assert_eq!(p.totals().tokens, t(510, 71, 1400, 0));
    }

    #[test]
    fn adversarial_turn_figures_never_count_less_than_the_stream_says() {
        let mut p = CodexParser::new();
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        turn(&mut p, 1000, 600, 50);
        // The same figures again (a repeated line): nothing more was spent.
        turn(&mut p, 1000, 600, 50);
        assert_eq!(p.totals().tokens, t(400, 50, 600, 0));
        // One figure up, another down (out of order, or a thread total that
        // lost a part): not growth of the last figures, so counted in full.
        turn(&mut p, 1200, 500, 40);
        assert_eq!(p.totals().tokens, t(400 + 700, 50 + 40, 600 + 500, 0));
        // A turn with no usage at all counts nothing it cannot see, and the
        // next figures still count from the last ones seen.
        feed(&mut p, r#"{"type":"turn.completed"}"#);
        turn(&mut p, 1300, 500, 60);
        assert_eq!(p.totals().tokens, t(1100 + 100, 90 + 20, 1100, 0));
    }

    #[test]
    fn errors_inside_a_turn_are_progress_and_turn_failed_is_the_outcome() {
        let mut p = CodexParser::new();
        feed(&mut p, r#"{"type":"thread.started","thread_id":"th1"}"#);
        feed(&mut p, r#"{"type":"turn.started"}"#);
        let events = feed(&mut p, r#"{"type":"error","message":"Reconnecting... 1/5"}"#);
        assert_eq!(events, vec![HarnessEvent::Progress { text: "error: Reconnecting... 1/5".into() }]);
        let events = feed(&mut p, r#"{"type":"turn.failed","error":{}}"#);
        assert_eq!(
            events,
            vec![HarnessEvent::Result {
                success: false,
                reason: Some("turn_failed".into()),
                text: Some("Reconnecting... 1/5".into()),
                session_id: Some("th1".into())
            }]
        );
        // Outside a turn, an error is the process's outcome.
        let events = feed(&mut p, r#"{"type":"error","message":"bad config"}"#);
        assert!(matches!(
            &events[..],
            [HarnessEvent::Result { success: false, reason: Some(r), .. }] if r == "error"
        ));
    }

    #[test]
    fn file_change_completed_without_start_reports_use_and_result() {
        let mut p = CodexParser::new();
        let events = feed(
            &mut p,
            r#"{"type":"item.completed","item":{"id":"item_5","type":"file_change","changes":[{"path":"src/a.rs","kind":"update"},{"path":"b.rs","kind":"add"}],"status":"completed"}}"#,
        );
        assert_eq!(
            events,
            vec![
                HarnessEvent::ToolUse {
                    id: Some("item_5".into()),
                    name: "file_change".into(),
                    summary: "update src/a.rs, add b.rs".into()
                },
                HarnessEvent::ToolResult {
                    id: Some("item_5".into()),
                    is_error: false,
                    summary: "update src/a.rs, add b.rs".into()
                }
            ]
        );
    }

    #[test]
    fn failing_command_and_mcp_error_are_tool_errors() {
        let mut p = CodexParser::new();
        let events = feed(
            &mut p,
            r#"{"type":"item.completed","item":{"id":"item_1","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}"#,
        );
        assert!(events.contains(&HarnessEvent::ToolResult {
            id: Some("item_1".into()),
            is_error: true,
            summary: "exit 1".into()
        }));
        let events = feed(
            &mut p,
            r#"{"type":"item.completed","item":{"id":"item_2","type":"mcp_tool_call","server":"docs","tool":"search","arguments":{"query":"x"},"result":null,"error":{"message":"boom"},"status":"failed"}}"#,
        );
        assert_eq!(
            events[0],
            HarnessEvent::ToolUse { id: Some("item_2".into()), name: "mcp__docs__search".into(), summary: "x".into() }
        );
        assert_eq!(
            events[1],
            HarnessEvent::ToolResult { id: Some("item_2".into()), is_error: true, summary: "boom".into() }
        );
    }
}
