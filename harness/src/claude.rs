//! Claude Code in its headless structured mode, all of it: how corral
//! starts it, how a message reaches it, and how its output reads.
//!
//! - Launch: `claude -p --output-format stream-json --verbose
//!   --include-partial-messages --input-format stream-json --permission-mode
//!   acceptEdits [--model M] [--disallowedTools ...] EXTRA`, its stdin a
//!   pipe; the task is the first JSON user message written there. A
//!   read-only sandbox takes away the writing tools (and Bash).
//! - Delivery: a message is one more JSON user message line on stdin
//!   ([`user_message_line`]); the CLI queues it for its next turn. A new
//!   task for an ended agent runs the same command with `--resume SESSION`.
//!   [`fork_session`] starts an agent from a copy of another's session.
//! - Output: its JSON lines become [`HarnessEvent`]s, and [`ClaudeParser`]
//!   keeps the agent's token usage and cost, as follows.
//!
//! Lines and what they become:
//!
//! - `system`/`init` → `SessionStarted` (session id, model), once per
//!   distinct pair (the CLI may restate it every turn). Other `system` lines
//!   (hooks, task notices, retries) are ignored.
//! - `assistant` → one event per content block: `text` and `thinking` →
//!   `Progress`, `tool_use` (also `server_tool_use`, `mcp_tool_use`) →
//!   `ToolUse` with a one-line summary of the input; plus live usage.
//! - `user` → `ToolResult` for each `tool_result` block (a user's own text is
//!   not repeated back).
//! - `stream_event` (with `--include-partial-messages`) → live usage only;
//!   their text deltas are not repeated as Progress, since the same text
//!   arrives whole in the `assistant` line.
//! - `result` → a settled `Usage`, then `Result`.
//! - Anything else (`control_response`, `rate_limit_event`, unknown types,
//!   JSON of the wrong shape) is ignored; non-JSON lines as described in
//!   [`crate::event`] (text → Progress, torn JSON → dropped).
//!
//! ## Usage: live, then settled
//!
//! Live usage is counted per `message.id`: Claude Code prints one
//! `assistant` line per content block and each repeats the message's usage,
//! so a message counts once, and a later line for the same id only adds what
//! grew (field by field maximum). Ids are not trusted to be unique (a model
//! server picks them): a `message_start`, or an id coming back after a
//! `user` line (tool results) ended its message, is a new call and counts
//! in full. So no stream makes the count lower than the calls it shows:
//! repeated ids, figures that go down, a `result` that reports less than
//! the lines did (settling keeps the larger). Its `output_tokens` is a start-of-message
//! snapshot, so live output is a lower bound; a `stream_event`
//! `message_delta` carries the message's exact (cumulative) `usage`, which
//! is credited to the message its `message_start` opened. Lines from
//! sub-agents (`parent_tool_use_id` set) count like the main agent's: the
//! spend is the agent's all the same.
//!
//! The `result` line settles: the running total becomes the CLI's figures.
//! Tokens come from `modelUsage` summed across models when present (it
//! covers sub-agents and auxiliary models; `usage` covers the main model
//! only: in the `claude-stream-json-5` fixture `usage` has 29 input tokens
//! while `modelUsage` has 29 + 3774 from a Haiku helper), else from `usage`;
//! cost from `total_cost_usd`. A result with no figures (or only zeros, as a
//! crashed turn may print) settles nothing and the live count stands.
//!
//! ## Several turns in one process: cumulative, not per turn
//!
//! With `--input-format stream-json` the CLI stays alive and prints a
//! `result` per turn. Decision: its figures are treated as **running totals
//! for the process** (for a resumed session, possibly carried over from the
//! earlier process), so each result counts only its growth over the
//! previous one for the same `session_id`. Evidence: Claude Code keeps cost
//! and per-model usage in process-wide state; anthropics/claude-code#39733
//! ("result.modelUsage reports cumulative session totals, not per-turn
//! deltas") shows turn 2 restating turn 1 plus its own, and
//! anthropics/claude-code#83239 says `total_cost_usd` "is the running total
//! for the lifetime of that Claude Code process", to subtract the previous
//! result's value for a per-turn figure. Summing results as if per turn
//! would count turn 1 again at every later turn.
//!
//! To stay right either way, a result lower than the previous one in any
//! field (or with a lower cost) is taken as a counter that started again (a
//! new process that did not carry the figures over) and counts in full; a
//! result for a different `session_id` also counts in full. What this cannot
//! tell apart: a fresh process whose first result is at least the previous
//! process's last in every field would be under-counted by that much. It
//! needs a new process that restarted its counters *and* immediately did
//! more work than the whole previous process, which the restored-totals
//! behaviour of `--resume` makes unlikely. Older CLIs without `modelUsage`
//! are settled from `usage` by the same rule; whether that field is per turn
//! there is not verified, and only matters for several turns in one process.
//! The other way round, a `session_id` that changes inside one process (a
//! `/clear` sent as a message) would count that process's earlier figures
//! again, if the CLI keeps them across the change (not verified either);
//! corral does not send such commands itself.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::event::{
    json_count, parse_object, progress, result_text, summarize_input, summarize_output, Cumulative, HarnessEvent,
    Ledger, Parser, TokenUsage, UsageTotals,
};
use crate::launch::{config_folder, flag_value, push, seed, Delivery, Input, Launch, Options, Sandbox};

// ---------------------------------------------------------------------------
// Launch and delivery.
// ---------------------------------------------------------------------------

/// The environment variable that names the `claude` binary.
pub(crate) const PROGRAM_VARIABLE: &str = "CORRAL_CLAUDE_BIN";

/// Every task ends with a `result` line.
pub(crate) const REPORTS_RESULTS: bool = true;

/// Messages go to stdin as JSON user messages.
pub(crate) const DELIVERY: Delivery = Delivery::Stdin;

/// The launch of `program` for `task`; `extra` goes after corral's own
/// arguments.
pub(crate) fn launch(program: &str, task: &str, options: &Options, extra: &[String]) -> Launch {
    let mut argv = vec![program.to_string()];
    // Partial messages carry each call's exact output tokens as it streams
    // (the assistant lines only a start-of-message snapshot), so token
    // budgets act on true figures.
    push(&mut argv, &["-p", "--output-format", "stream-json", "--verbose", "--include-partial-messages"]);
    push(&mut argv, &["--input-format", "stream-json"]);
    push(&mut argv, &["--permission-mode", "acceptEdits"]);
    if let Some(model) = options.model {
        push(&mut argv, &["--model", model]);
    }
    if options.sandbox == Some(Sandbox::ReadOnly) {
        push(&mut argv, &["--disallowedTools", "Write,Edit,MultiEdit,NotebookEdit,Bash"]);
    }
    argv.extend_from_slice(extra);
    Launch { argv, raw_pty: true, input: Input::Pipe, first_input: Some(message_input(task, None)) }
}

/// The stdin line, newline included, that delivers `text`.
pub(crate) fn message_input(text: &str, session_id: Option<&str>) -> String {
    format!("{}\n", user_message_line(text, session_id))
}

/// An ended agent's next run with `task`: the same command, resuming
/// `session` when there is one, the task as its first input.
pub(crate) fn next_task(launch_argv: &[String], session: Option<&str>, task: &str) -> (Vec<String>, Option<String>) {
    let mut argv = launch_argv.to_vec();
    if let Some(session) = session {
        push(&mut argv, &["--resume", session]);
    }
    (argv, Some(message_input(task, None)))
}

/// Forks a Claude Code session for an agent that will run in `cwd`: the
/// arguments that start it from a copy of `session`. Claude Code keeps a
/// session in `<config dir>/projects/<working folder, separators as
/// '-'>/<id>.jsonl` and resumes only sessions of the folder it runs in, so
/// the session file is copied under `cwd`'s folder first; `--fork-session`
/// then gives the child a session id of its own. `env` is the agent's
/// environment (`CLAUDE_CONFIG_DIR`, else `$HOME/.claude`).
pub fn fork_session(env: &BTreeMap<String, String>, session: &str, cwd: &Path) -> Result<Vec<String>, String> {
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
    let target = projects.join(project_folder(cwd));
    std::fs::create_dir_all(&target)
        .and_then(|()| std::fs::copy(&found, target.join(&file)).map(|_| ()))
        .map_err(|e| format!("cannot copy the session: {e}"))?;
    Ok(vec!["--resume".into(), session.into(), "--fork-session".into()])
}

/// The first of `args` that would lift Claude Code's own permission
/// checks (`--dangerously-skip-permissions`, `--permission-mode
/// bypassPermissions`), as written. Any corral sandbox narrower than full
/// refuses them.
pub(crate) fn widening_arg(_sandbox: Sandbox, args: &[String]) -> Option<String> {
    for (i, arg) in args.iter().enumerate() {
        if arg == "--dangerously-skip-permissions" || arg == "--allow-dangerously-skip-permissions" {
            return Some(arg.clone());
        }
        if let Some(mode) = flag_value(args, i, "--permission-mode").filter(|m| *m == "bypassPermissions") {
            return Some(format!("--permission-mode {mode}"));
        }
    }
    None
}

/// The folder under `projects/` where Claude Code keeps the sessions of
/// the working folder `cwd` (its path, every other character than letters
/// and digits as `-`).
fn project_folder(cwd: &Path) -> String {
    cwd.display().to_string().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect()
}

/// Gives Claude Code the private state folder `folder`
/// (`CLAUDE_CONFIG_DIR`), seeded from the person's (`$CLAUDE_CONFIG_DIR`,
/// else `~/.claude`) with `settings.json`, `CLAUDE.md` and the sessions of
/// `cwd` (a forked session is there), never `.credentials.json`.
pub(crate) fn private_state(
    env: &BTreeMap<String, String>,
    folder: &Path,
    cwd: &Path,
) -> Result<Vec<(String, String)>, String> {
    if let Some(source) = config_folder(env, "CLAUDE_CONFIG_DIR", ".claude") {
        let sessions = format!("projects/{}", project_folder(cwd));
        seed(&source, folder, &["settings.json", "CLAUDE.md", &sessions])?;
    }
    Ok(vec![("CLAUDE_CONFIG_DIR".into(), folder.display().to_string())])
}

/// The stdin line (without newline) that delivers `text` as a user message
/// to `claude -p --input-format stream-json`: `{"type":"user","message":
/// {"role":"user","content":"..."},"parent_tool_use_id":null,"session_id":
/// "..."}`, with `session_id` `"default"` when `None`. The text is JSON
/// escaped, so the line is always one line.
pub fn user_message_line(text: &str, session_id: Option<&str>) -> String {
    let text = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned());
    let session = serde_json::to_string(session_id.unwrap_or("default")).unwrap_or_else(|_| "\"default\"".to_owned());
    format!(
        r#"{{"type":"user","message":{{"role":"user","content":{text}}},"parent_tool_use_id":null,"session_id":{session}}}"#
    )
}

/// Messages tracked at most between two results; a runaway turn starts over
/// rather than growing without bound.
const MAX_TRACKED_MESSAGES: usize = 100_000;

/// Parser for Claude Code `stream-json` output. One per agent.
#[derive(Debug, Default)]
pub struct ClaudeParser {
    ledger: Ledger,
    /// Sum of what the result lines settled.
    settled: TokenUsage,
    /// Counted live since the last settling result.
    live: TokenUsage,
    /// Sum of the cost the result lines reported (growth per session).
    cost: Option<f64>,
    cumulative: Cumulative,
    /// Usage counted so far per message id (this turn).
    messages: HashMap<String, TokenUsage>,
    /// The message each stream (main agent "", or a sub-agent's parent tool
    /// use id) is currently printing, from `message_start`.
    streams: HashMap<String, String>,
    last_session: Option<(Option<String>, Option<String>)>,
}

/// The fields of a line that matter; any JSON value fits each, so a field of
/// an unexpected shape never makes the whole line unreadable. Unknown fields
/// are skipped without being stored.
#[derive(Debug, Default, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: Option<Value>,
    subtype: Option<Value>,
    session_id: Option<Value>,
    model: Option<Value>,
    message: Option<Value>,
    parent_tool_use_id: Option<Value>,
    event: Option<Value>,
    is_error: Option<Value>,
    result: Option<Value>,
    errors: Option<Value>,
    total_cost_usd: Option<Value>,
    usage: Option<Value>,
    #[serde(rename = "modelUsage")]
    model_usage: Option<Value>,
}

fn as_str(v: &Option<Value>) -> Option<&str> {
    v.as_ref().and_then(Value::as_str)
}

/// Anthropic `usage` object → tokens.
fn anthropic_usage(v: &Value) -> TokenUsage {
    TokenUsage {
        input: json_count(v.get("input_tokens")),
        output: json_count(v.get("output_tokens")),
        cache_read: json_count(v.get("cache_read_input_tokens")),
        cache_write: json_count(v.get("cache_creation_input_tokens")),
    }
}

impl ClaudeParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Credits `usage` to message `id` (what grew over what it had), and
    /// returns the event reporting it.
    fn count_message(&mut self, id: Option<&str>, usage: TokenUsage) -> Option<HarnessEvent> {
        let delta = match id {
            Some(id) => {
                if self.messages.len() >= MAX_TRACKED_MESSAGES && !self.messages.contains_key(id) {
                    self.messages.clear();
                }
                let counted = self.messages.entry(id.to_owned()).or_default();
                let grown = counted.max(usage);
                let delta = grown.saturating_sub(*counted);
                *counted = grown;
                delta
            }
            // No id to dedupe by: count it as it comes.
            None => usage,
        };
        if delta.is_zero() {
            return None;
        }
        self.live = self.live.saturating_add(delta);
        self.ledger.add(delta, None, false)
    }

    fn stream_key(line: &Line) -> String {
        as_str(&line.parent_tool_use_id).unwrap_or("").to_owned()
    }

    fn on_system(&mut self, line: &Line) -> Vec<HarnessEvent> {
        if as_str(&line.subtype) != Some("init") {
            return Vec::new();
        }
        let session_id = as_str(&line.session_id).map(str::to_owned);
        let model = as_str(&line.model).map(str::to_owned);
        let pair = (session_id.clone(), model.clone());
        if self.last_session.as_ref() == Some(&pair) {
            return Vec::new();
        }
        self.last_session = Some(pair);
        vec![HarnessEvent::SessionStarted { session_id, model }]
    }

    fn on_assistant(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let mut events = Vec::new();
        let Some(message) = line.message.as_ref() else {
            return events;
        };
        let id = message.get("id").and_then(Value::as_str);
        if let Some(blocks) = message.get("content").and_then(Value::as_array) {
            for block in blocks {
                let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "text" => events.extend(block.get("text").and_then(Value::as_str).and_then(progress)),
                    "thinking" => events.extend(block.get("thinking").and_then(Value::as_str).and_then(progress)),
                    "tool_use" | "server_tool_use" | "mcp_tool_use" => events.push(HarnessEvent::ToolUse {
                        id: block.get("id").and_then(Value::as_str).map(str::to_owned),
                        name: block.get("name").and_then(Value::as_str).unwrap_or("tool").to_owned(),
                        summary: block.get("input").map(summarize_input).unwrap_or_default(),
                    }),
                    _ => {}
                }
            }
        } else if let Some(text) = message.get("content").and_then(Value::as_str) {
            events.extend(progress(text));
        }
        if let Some(id) = id {
            self.streams.insert(Self::stream_key(line), id.to_owned());
        }
        if let Some(usage) = message.get("usage").filter(|u| u.is_object()) {
            events.extend(self.count_message(id, anthropic_usage(usage)));
        }
        events
    }

    fn on_user(&mut self, line: &Line) -> Vec<HarnessEvent> {
        // A user line (tool results) ends the message its stream was
        // printing: a later message with the same id is another call.
        if let Some(id) = self.streams.remove(&Self::stream_key(line)) {
            self.messages.remove(&id);
        }
        let Some(blocks) = line.message.as_ref().and_then(|m| m.get("content")).and_then(Value::as_array) else {
            return Vec::new();
        };
        blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            .map(|b| HarnessEvent::ToolResult {
                id: b.get("tool_use_id").and_then(Value::as_str).map(str::to_owned),
                is_error: b.get("is_error").and_then(Value::as_bool) == Some(true),
                summary: b.get("content").map(summarize_output).unwrap_or_default(),
            })
            .collect()
    }

    fn on_stream_event(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let Some(event) = line.event.as_ref() else {
            return Vec::new();
        };
        let key = Self::stream_key(line);
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let Some(message) = event.get("message") else {
                    return Vec::new();
                };
                let id = message.get("id").and_then(Value::as_str);
                if let Some(id) = id {
                    // Each message_start opens a call, whatever its id:
                    // an id seen before counts again from nothing.
                    self.messages.remove(id);
                    self.streams.insert(key, id.to_owned());
                }
                match message.get("usage").filter(|u| u.is_object()) {
                    Some(usage) => self.count_message(id, anthropic_usage(usage)).into_iter().collect(),
                    None => Vec::new(),
                }
            }
            Some("message_delta") => {
                let Some(usage) = event.get("usage").filter(|u| u.is_object()) else {
                    return Vec::new();
                };
                let id = self.streams.get(&key).cloned();
                self.count_message(id.as_deref(), anthropic_usage(usage)).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    fn on_result(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let mut events = Vec::new();
        let figures = settled_figures(line).filter(|t| !t.is_zero());
        let cost = line.total_cost_usd.as_ref().and_then(Value::as_f64).or_else(|| model_usage_cost(line));
        let scope = as_str(&line.session_id).unwrap_or("");
        let (token_growth, cost_growth) = self.cumulative.advance(scope, figures, cost);
        // A live count nearer the result's whole figures than their growth
        // over the last result shows the result restates this process's
        // figures alone (a resume that did not carry the earlier ones over):
        // its cost is this process's alone too, and counts in full, as its
        // tokens do below. A count that is merely a little above the
        // growth (a CLI that under-reports) is not taken for one: each
        // later turn would count the whole cost again.
        let restated = figures.is_some_and(|whole| {
            let before = whole.total().saturating_sub(token_growth.total());
            self.live.total() > token_growth.total().saturating_add(before / 2)
        });
        let cost_growth = match restated {
            true => cost.filter(|c| c.is_finite() && *c >= 0.0),
            false => cost_growth,
        };
        if let Some(growth) = cost_growth {
            self.cost = Some(self.cost.unwrap_or(0.0) + growth);
        }
        if figures.is_some() {
            // Settling never lowers the count below what the lines showed:
            // a result whose figures fall short of the live count (a CLI
            // that under-reports, a crafted line) leaves the live count.
            let growth = token_growth.max(self.live);
            self.settled = self.settled.saturating_add(growth);
            self.live = TokenUsage::default();
            events.extend(self.ledger.set(self.settled, self.cost, true, true));
        } else {
            let total = self.settled.saturating_add(self.live);
            events.extend(self.ledger.set(total, self.cost, false, false));
        }
        // Message ids do not repeat across turns.
        self.messages.clear();
        self.streams.clear();

        let subtype = as_str(&line.subtype).unwrap_or("");
        let is_error = line.is_error.as_ref().and_then(Value::as_bool) == Some(true);
        let success = subtype == "success" && !is_error;
        let reason = if success {
            None
        } else if subtype.is_empty() || subtype == "success" {
            Some("error".to_owned())
        } else {
            Some(subtype.to_owned())
        };
        let text = as_str(&line.result).and_then(result_text).or_else(|| errors_text(line));
        events.push(HarnessEvent::Result {
            success,
            reason,
            text,
            session_id: as_str(&line.session_id).map(str::to_owned),
        });
        events
    }
}

/// The result's token figures: `modelUsage` summed across models, else `usage`.
fn settled_figures(line: &Line) -> Option<TokenUsage> {
    if let Some(models) = line.model_usage.as_ref().and_then(Value::as_object).filter(|m| !m.is_empty()) {
        let mut sum = TokenUsage::default();
        for m in models.values() {
            sum = sum.saturating_add(TokenUsage {
                input: json_count(m.get("inputTokens")),
                output: json_count(m.get("outputTokens")),
                cache_read: json_count(m.get("cacheReadInputTokens")),
                cache_write: json_count(m.get("cacheCreationInputTokens")),
            });
        }
        return Some(sum);
    }
    line.usage.as_ref().filter(|u| u.is_object()).map(anthropic_usage)
}

/// Cost as the sum of `modelUsage.*.costUSD`, for a result without `total_cost_usd`.
fn model_usage_cost(line: &Line) -> Option<f64> {
    let models = line.model_usage.as_ref()?.as_object()?;
    let costs: Vec<f64> = models.values().filter_map(|m| m.get("costUSD").and_then(Value::as_f64)).collect();
    (!costs.is_empty()).then(|| costs.iter().sum())
}

/// `errors` (newer error results) joined into one text.
fn errors_text(line: &Line) -> Option<String> {
    let errors = line.errors.as_ref()?.as_array()?;
    let parts: Vec<String> = errors
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    result_text(&parts.join("; "))
}

impl Parser for ClaudeParser {
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        let parsed: Line = match parse_object(line) {
            Ok(parsed) => parsed,
            Err(events) => return events,
        };
        match as_str(&parsed.kind) {
            Some("system") => self.on_system(&parsed),
            Some("assistant") => self.on_assistant(&parsed),
            Some("user") => self.on_user(&parsed),
            Some("stream_event") => self.on_stream_event(&parsed),
            Some("result") => self.on_result(&parsed),
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
    fn claude_reads_its_task_from_stdin() {
        let launch = Harness::Claude
            .launch(
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
        assert_eq!(Harness::Claude.delivery(), Delivery::Stdin);
    }

    #[test]
    fn next_tasks_resume_the_session() {
        let (argv, input) = Harness::Claude.next_task(&["claude".to_string()], Some("s-1"), "again");
        assert_eq!(argv, ["claude", "--resume", "s-1"]);
        assert!(input.unwrap().contains("\"again\""));
        let (argv, _) = Harness::Claude.next_task(&["claude".to_string()], None, "again");
        assert_eq!(argv, ["claude"]);
    }

    #[test]
    fn a_forked_session_is_copied_under_the_childs_folder() {
        let home = tempfile::tempdir().unwrap();
        let parent = home.path().join(".claude/projects/-w-parent");
        std::fs::create_dir_all(&parent).unwrap();
        std::fs::write(parent.join("s-1.jsonl"), "{}\n").unwrap();
        let env = BTreeMap::from([("HOME".to_string(), home.path().display().to_string())]);
        let args = Harness::Claude.fork_session(&env, "s-1", Path::new("/w/child")).unwrap();
        assert_eq!(args, ["--resume", "s-1", "--fork-session"]);
        assert!(home.path().join(".claude/projects/-w-child/s-1.jsonl").exists());
        let missing = fork_session(&env, "s-2", Path::new("/w/child")).unwrap_err();
        assert!(missing.contains("no file of session s-2"), "{missing}");
    }

    fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage { input, output, cache_read, cache_write }
    }

    fn feed(p: &mut ClaudeParser, line: &str) -> Vec<HarnessEvent> {
        p.feed_line(line.as_bytes())
    }

    fn assistant(id: &str, parent: Option<&str>, usage: (u64, u64, u64, u64)) -> String {
        let parent = parent.map_or("null".to_owned(), |p| format!("\"{p}\""));
        format!(
            r#"{{"type":"assistant","parent_tool_use_id":{parent},"session_id":"s","message":{{"id":"{id}","role":"assistant","content":[{{"type":"text","text":"x"}}],"usage":{{"input_tokens":{},"output_tokens":{},"cache_read_input_tokens":{},"cache_creation_input_tokens":{}}}}}}}"#,
            usage.0, usage.1, usage.2, usage.3
        )
    }

    fn result(model_usage: &str, cost: f64) -> String {
        format!(
            r#"{{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"s","total_cost_usd":{cost},"modelUsage":{model_usage}}}"#
        )
    }

    fn model(input: u64, output: u64, cache_read: u64, cache_write: u64) -> String {
        format!(
            r#"{{"inputTokens":{input},"outputTokens":{output},"cacheReadInputTokens":{cache_read},"cacheCreationInputTokens":{cache_write},"costUSD":0}}"#
        )
    }

    #[test]
    fn assistant_lines_of_one_message_count_once() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &assistant("m1", None, (10, 1, 100, 5)));
        // Same message, next content block: usage repeated, not counted again.
        let events = feed(&mut p, &assistant("m1", None, (10, 1, 100, 5)));
        assert!(!events.iter().any(|e| matches!(e, HarnessEvent::Usage { .. })));
        assert_eq!(p.totals().tokens, t(10, 1, 100, 5));
        // A later line for the same id with more output adds only the growth.
        let events = feed(&mut p, &assistant("m1", None, (10, 7, 100, 5)));
        assert!(events.contains(&HarnessEvent::Usage {
            delta: t(0, 6, 0, 0),
            total: t(10, 7, 100, 5),
            cost_usd: None,
            settled: false
        }));
        feed(&mut p, &assistant("m2", None, (3, 2, 110, 0)));
        // m1 (10,7,100,5) + m2 (3,2,110,0)
        assert_eq!(p.totals().tokens, t(13, 9, 210, 5));
    }

    fn tool_result_line() -> &'static str {
        r#"{"type":"user","parent_tool_use_id":null,"session_id":"s","message":{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]}}"#
    }

    fn stream_start(id: &str, input: u64) -> String {
        format!(
            r#"{{"type":"stream_event","event":{{"type":"message_start","message":{{"id":"{id}","usage":{{"input_tokens":{input},"output_tokens":1}}}}}},"parent_tool_use_id":null}}"#
        )
    }

    fn stream_delta(output: u64) -> String {
        format!(
            r#"{{"type":"stream_event","event":{{"type":"message_delta","delta":{{}},"usage":{{"output_tokens":{output}}}}},"parent_tool_use_id":null}}"#
        )
    }

    // Adversarial streams: nothing a model server or a CLI prints may make
    // the count lower than the calls the output shows.

    #[test]
    fn a_message_id_used_again_after_tool_results_is_another_call() {
        let mut p = ClaudeParser::new();
        for _ in 0..3 {
            feed(&mut p, &assistant("same", None, (1000, 50, 0, 0)));
            feed(&mut p, tool_result_line());
        }
        assert_eq!(p.totals().tokens, t(3000, 150, 0, 0));
    }

    #[test]
    fn every_message_start_is_a_call_whatever_its_id() {
        let mut p = ClaudeParser::new();
        for _ in 0..3 {
            feed(&mut p, &stream_start("same", 1000));
            feed(&mut p, &stream_delta(50));
            // The assistant line repeating the message's usage adds nothing.
            feed(&mut p, &assistant("same", None, (1000, 1, 0, 0)));
        }
        assert_eq!(p.totals().tokens, t(3000, 150, 0, 0));
    }

    #[test]
    fn figures_going_down_keep_the_largest() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &stream_start("m1", 1000));
        feed(&mut p, &stream_delta(70));
        feed(&mut p, &stream_delta(3));
        feed(&mut p, &assistant("m1", None, (10, 1, 0, 0)));
        assert_eq!(p.totals().tokens, t(1000, 70, 0, 0));
    }

    #[test]
    fn events_out_of_order_count_in_full() {
        let mut p = ClaudeParser::new();
        // A delta before any start has no message to go to: it counts as it comes.
        feed(&mut p, &stream_delta(70));
        feed(&mut p, &stream_start("m1", 1000));
        assert!(p.totals().tokens.covers(&t(1000, 70, 0, 0)), "{:?}", p.totals().tokens);
    }

    #[test]
    fn usage_only_at_the_end_is_counted() {
        let mut p = ClaudeParser::new();
        feed(
            &mut p,
            r#"{"type":"assistant","session_id":"s","message":{"id":"m1","content":[{"type":"text","text":"x"}]}}"#,
        );
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(400, 20, 0, 0)), 0.1));
        assert_eq!(p.totals().tokens, t(400, 20, 0, 0));
    }

    #[test]
    fn a_resumed_process_whose_result_restates_its_own_figures_counts_its_cost_in_full() {
        // Regression: tokens were counted as a restart (the live count
        // showed it), the cost as a difference (1.2 - 1.0).
        let mut p = ClaudeParser::new();
        feed(&mut p, &assistant("a", None, (100, 50, 1000, 10)));
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(100, 50, 1000, 10)), 1.0));
        feed(&mut p, &assistant("b", None, (120, 60, 1200, 12)));
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(120, 60, 1200, 12)), 1.2));
        assert_eq!(p.totals().tokens, t(220, 110, 2200, 22));
        assert!((p.totals().cost_usd.unwrap() - 2.2).abs() < 1e-9, "{:?}", p.totals().cost_usd);
        // Turns of one process restate a growing total: each counts its growth.
        let mut p = ClaudeParser::new();
        feed(&mut p, &assistant("a", None, (100, 50, 1000, 10)));
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(100, 50, 1000, 10)), 1.0));
        feed(&mut p, &assistant("b", None, (21, 11, 201, 3)));
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(120, 60, 1200, 12)), 1.2));
        assert_eq!(p.totals().tokens, t(121, 61, 1201, 13));
        assert!((p.totals().cost_usd.unwrap() - 1.2).abs() < 1e-9, "{:?}", p.totals().cost_usd);
    }

    #[test]
    fn a_result_reporting_less_than_the_lines_showed_does_not_lower_the_count() {
        let mut p = ClaudeParser::new();
        for id in ["a", "b", "c"] {
            feed(&mut p, &assistant(id, None, (1000, 50, 0, 0)));
        }
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(1000, 50, 0, 0)), 0.1));
        assert_eq!(p.totals().tokens, t(3000, 150, 0, 0));
    }

    #[test]
    fn a_stream_cut_mid_way_keeps_what_it_showed() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &stream_start("m1", 1000));
        feed(&mut p, &stream_delta(40));
        // No result: the process died. The count stands.
        assert_eq!(p.totals().tokens, t(1000, 40, 0, 0));
    }

    #[test]
    fn sub_agent_lines_count_in_live_usage() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &assistant("main1", None, (5, 1, 0, 1000)));
        feed(&mut p, &assistant("sub1", Some("toolu_1"), (7, 2, 0, 300)));
        // main1 + sub1 = (5+7, 1+2, 0, 1000+300)
        assert_eq!(p.totals().tokens, t(12, 3, 0, 1300));
    }

    #[test]
    fn stream_event_message_delta_makes_output_exact() {
        let mut p = ClaudeParser::new();
        feed(
            &mut p,
            r#"{"type":"stream_event","event":{"type":"message_start","message":{"id":"m1","usage":{"input_tokens":20,"output_tokens":1,"cache_read_input_tokens":0,"cache_creation_input_tokens":0}}},"parent_tool_use_id":null}"#,
        );
        // The assistant line repeats the start-of-message snapshot.
        feed(&mut p, &assistant("m1", None, (20, 1, 0, 0)));
        assert_eq!(p.totals().tokens, t(20, 1, 0, 0));
        feed(
            &mut p,
            r#"{"type":"stream_event","event":{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":70}},"parent_tool_use_id":null}"#,
        );
        assert_eq!(p.totals().tokens, t(20, 70, 0, 0));
    }

    #[test]
    fn result_settles_on_model_usage_summed_across_models() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &assistant("m1", None, (10, 1, 100, 5)));
        let models = format!(r#"{{"a":{},"b":{}}}"#, model(10, 40, 100, 5), model(300, 20, 0, 0));
        let events = feed(&mut p, &result(&models, 0.25));
        // a + b = (10+300, 40+20, 100+0, 5+0); delta from live (10,1,100,5).
        assert_eq!(
            events[0],
            HarnessEvent::Usage {
                delta: t(300, 59, 0, 0),
                total: t(310, 60, 100, 5),
                cost_usd: Some(0.25),
                settled: true
            }
        );
        assert!(matches!(events[1], HarnessEvent::Result { success: true, .. }));
    }

    #[test]
    fn later_turns_in_one_process_count_only_their_growth() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(100, 10, 0, 0)), 1.0));
        feed(&mut p, &assistant("turn2", None, (30, 1, 0, 0)));
        // Live during turn 2: settled turn 1 + live.
        assert_eq!(p.totals().tokens, t(130, 11, 0, 0));
        // Turn 2's result restates the process total: 100+30, 10+5.
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(130, 15, 0, 0)), 1.5));
        assert_eq!(p.totals().tokens, t(130, 15, 0, 0));
        assert_eq!(p.totals().cost_usd, Some(1.5));
        // A new process (counters start again): counted in full on top.
        feed(&mut p, &result(&format!(r#"{{"a":{}}}"#, model(50, 5, 0, 0)), 0.5));
        assert_eq!(p.totals().tokens, t(180, 20, 0, 0));
        assert_eq!(p.totals().cost_usd, Some(2.0));
    }

    #[test]
    fn error_reported_as_success_subtype_is_a_failed_result() {
        let mut p = ClaudeParser::new();
        let events = feed(
            &mut p,
            r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529 overloaded","session_id":"s"}"#,
        );
        assert_eq!(
            events,
            vec![HarnessEvent::Result {
                success: false,
                reason: Some("error".into()),
                text: Some("API Error: 529 overloaded".into()),
                session_id: Some("s".into())
            }]
        );
    }

    #[test]
    fn error_subtypes_are_failed_results_with_the_subtype_as_reason() {
        let mut p = ClaudeParser::new();
        let events = feed(
            &mut p,
            r#"{"type":"result","subtype":"error_max_turns","is_error":false,"session_id":"s","errors":["max turns reached"]}"#,
        );
        assert_eq!(
            events.last(),
            Some(&HarnessEvent::Result {
                success: false,
                reason: Some("error_max_turns".into()),
                text: Some("max turns reached".into()),
                session_id: Some("s".into())
            })
        );
    }

    #[test]
    fn zero_figures_do_not_erase_live_usage() {
        let mut p = ClaudeParser::new();
        feed(&mut p, &assistant("m1", None, (10, 1, 0, 0)));
        feed(
            &mut p,
            r#"{"type":"result","subtype":"error_during_execution","session_id":"s","usage":{"input_tokens":0,"output_tokens":0},"modelUsage":{}}"#,
        );
        assert_eq!(p.totals().tokens, t(10, 1, 0, 0));
    }

    #[test]
    fn user_message_line_is_one_json_line() {
        let line = user_message_line("fix \"it\"\nplease", None);
        assert!(!line.contains('\n'));
        assert!(line.starts_with(r#"{"type":"user","message":{"role":"user","content":"#));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "user");
        assert_eq!(v["message"]["role"], "user");
        assert_eq!(v["message"]["content"], "fix \"it\"\nplease");
        assert_eq!(v["parent_tool_use_id"], Value::Null);
        assert_eq!(v["session_id"], "default");
        let v: Value = serde_json::from_str(&user_message_line("hi", Some("abc-123"))).unwrap();
        assert_eq!(v["session_id"], "abc-123");
    }

    #[test]
    fn init_is_reported_once_per_session() {
        let mut p = ClaudeParser::new();
        let init = r#"{"type":"system","subtype":"init","session_id":"s1","model":"m"}"#;
        assert_eq!(feed(&mut p, init).len(), 1);
        assert!(feed(&mut p, init).is_empty());
        assert!(feed(&mut p, r#"{"type":"system","subtype":"hook_started","session_id":"s1"}"#).is_empty());
    }
}
