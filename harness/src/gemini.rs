//! Gemini CLI in its headless structured mode, all of it: how corral starts
//! it and how its output reads.
//!
//! - Launch: `gemini --output-format stream-json --skip-trust [--model M]
//!   EXTRA -p TASK`, its stdin `/dev/null`. `--skip-trust`: corral made the
//!   worktree from the person's repository, and headless Gemini CLI 0.61
//!   refuses an untrusted folder (exit 55, nothing on stdout). Give a
//!   `--model`: without one it routes through `auto`, which makes extra
//!   router calls. Files are written with `--approval-mode auto_edit`
//!   (corral passes on what is given after `--`); `--yolo` (shell too) is
//!   refused under corral's sandbox (see [`widening_arg`]). The model
//!   server comes from the environment (`GOOGLE_GEMINI_BASE_URL`,
//!   `GEMINI_API_KEY`), passed through from the spawning one; with a base
//!   URL set, Gemini CLI also needs `security.auth.selectedType:
//!   "gemini-api-key"` in its settings (docs/agents/gemini-cli.md §2).
//! - Delivery: none; `gemini -p` takes no input while it runs. A new task
//!   for an ended agent is a new `-p TASK` run.
//! - Output: its JSON lines become [`HarnessEvent`]s, and [`GeminiParser`]
//!   keeps the agent's token usage. Gemini reports no cost:
//!   [`Parser::totals`] has `cost_usd: None`.
//!
//! Lines and what they become (google-gemini/gemini-cli,
//! `packages/core/src/output/types.ts`):
//!
//! - `init` → `SessionStarted` (session id, model).
//! - `message` from the assistant → `Progress` (chunks when `delta` is
//!   true), also gathered (bounded) as the run's reply; a `user` message
//!   starts a new reply.
//! - `tool_use` → `ToolUse` (`tool_id`, `tool_name`, summary of
//!   `parameters`); `tool_result` → `ToolResult` (error when `status` is
//!   `error`; summary of `output` or `error.message`).
//! - `error` (a warning or non-fatal error; a fatal one ends in a failed
//!   `result`) → `Progress` "error: ...".
//! - `result` → a settled `Usage` when it has `stats`, then `Result`
//!   (success when `status` is `success`; otherwise reason `error.type` or
//!   `error`, text `error.message`; on success the gathered reply).
//! - Anything else is ignored; non-JSON lines as described in
//!   [`crate::event`].
//!
//! ## Usage: only on `result.stats`
//!
//! `stats` aggregates the process's session metrics across models
//! (`StreamJsonFormatter.convertToStreamStats`): `input_tokens` is the
//! prompt tokens, of which `cached` were cache hits and `input` were not
//! (`input = input_tokens - cached`); `output_tokens` is the candidates
//! tokens; `total_tokens` is Gemini's `totalTokenCount`, which also holds
//! the thinking tokens and the tool-use prompt tokens that `stats` does not
//! list. Mapping: `input = input` (or `input_tokens - cached`), `cache_read
//! = cached`, `output = output_tokens + (total_tokens - input_tokens -
//! output_tokens)`: the unlisted rest is counted as output, since thinking
//! tokens make most of it and bill as output. Older CLIs print only
//! `total_tokens`; with no breakdown, all of it counts as `input` (prompts
//! dominate a coding agent's spend), so budgets still see it.
//!
//! ## Live usage: the chat log
//!
//! So that a budget can stop a run that keeps calling tools, the live
//! figures come from the CLI's chat log ([`usage_log`]:
//! `$GEMINI_CLI_HOME/.gemini/tmp/<project>/chats/session-<time>-<first 8 of
//! the session id>.jsonl`, `$HOME` when `GEMINI_CLI_HOME` is not set),
//! where Gemini CLI 0.61 writes each model message as it ends, a line
//! `{"id", "type": "gemini", "tokens": {"input", "output", "cached",
//! "thoughts", "tool", "total"}, ...}` (rewritten, same id, when its tool
//! calls finish). Each message's latest figures count once, mapped as the
//! stats are (`input - cached`, `cached`, `output + (total - input -
//! output)`), as unsettled usage, from the run's `init` to its `result`,
//! which then settles the run on its stats (lines read after it belong to
//! the run it settled). A run's live figures never lower the total.
//!
//! The stats are running totals for the session: the CLI's telemetry
//! accumulates over the whole process, and on `--resume` it is hydrated from
//! the saved conversation (`UiTelemetryService.hydrate`: "used when
//! resuming a session to restore token counts"). So, like Codex's, the
//! figures are kept per session id (from `init`) and only their growth
//! counts; figures lower than the previous ones for the session (a version
//! that does not hydrate) count in full, and so does a new session.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::event::{
    json_count, one_line, parse_object, progress, result_text, summarize_input, summarize_output, Cumulative,
    HarnessEvent, Ledger, Parser, TokenUsage, UsageTotals, RESULT_TEXT_MAX_CHARS, SUMMARY_MAX_CHARS,
};
use crate::launch::{flag_value, push, seed, with_task, Delivery, Input, Launch, Options, Sandbox};

// ---------------------------------------------------------------------------
// Launch and delivery.
// ---------------------------------------------------------------------------

/// The environment variable that names the `gemini` binary.
pub(crate) const PROGRAM_VARIABLE: &str = "CORRAL_GEMINI_BIN";

/// Every run ends with a `result` line.
pub(crate) const REPORTS_RESULTS: bool = true;

/// It takes no input while it runs.
pub(crate) const DELIVERY: Delivery = Delivery::Refuse("gemini -p takes no input while it runs");

/// The launch of `program` for `task`; `extra` goes after corral's own
/// arguments, the task last after `-p`.
pub(crate) fn launch(program: &str, task: &str, options: &Options, extra: &[String]) -> Launch {
    let mut argv = vec![program.to_string()];
    push(&mut argv, &["--output-format", "stream-json", "--skip-trust"]);
    if let Some(model) = options.model {
        push(&mut argv, &["--model", model]);
    }
    argv.extend_from_slice(extra);
    push(&mut argv, &["-p", task]);
    Launch { argv, raw_pty: true, input: Input::Null, first_input: None }
}

/// An ended agent's next run with `task`: the launch command with the new
/// task (a new session).
pub(crate) fn next_task(launch_argv: &[String], task: &str) -> (Vec<String>, Option<String>) {
    (with_task(launch_argv, task), None)
}

/// The first of `args` that would lift Gemini CLI's own approvals
/// (`--yolo`, `--approval-mode yolo`; `auto_edit` too under read-only), as
/// written.
pub(crate) fn widening_arg(sandbox: Sandbox, args: &[String]) -> Option<String> {
    for (i, arg) in args.iter().enumerate() {
        if arg == "--yolo" || arg == "-y" {
            return Some(arg.clone());
        }
        let wider = |mode: &&str| *mode == "yolo" || (*mode == "auto_edit" && sandbox == Sandbox::ReadOnly);
        if let Some(mode) = flag_value(args, i, "--approval-mode").filter(wider) {
            return Some(format!("--approval-mode {mode}"));
        }
    }
    None
}

/// Gives Gemini CLI the private state folder `folder`
/// (`GEMINI_CLI_HOME`, whose `.gemini/` it uses), seeded with the person's
/// `settings.json` and `GEMINI.md` (from `$GEMINI_CLI_HOME/.gemini`, else
/// `~/.gemini`), never its credentials.
pub(crate) fn private_state(env: &BTreeMap<String, String>, folder: &Path) -> Result<Vec<(String, String)>, String> {
    let home = ["GEMINI_CLI_HOME", "HOME"].iter().find_map(|name| env.get(*name).filter(|v| !v.is_empty()));
    if let Some(source) = home.map(|home| Path::new(home).join(".gemini")) {
        seed(&source, &folder.join(".gemini"), &["settings.json", "GEMINI.md"])?;
    }
    Ok(vec![("GEMINI_CLI_HOME".into(), folder.display().to_string())])
}

/// The chat log of Gemini CLI session `session` for an agent whose
/// environment is `env` (see the module doc), when it exists.
pub(crate) fn usage_log(env: &BTreeMap<String, String>, session: &str) -> Option<std::path::PathBuf> {
    let home = ["GEMINI_CLI_HOME", "HOME"].iter().find_map(|name| env.get(*name).filter(|v| !v.is_empty()))?;
    let short: String = session.chars().take(8).collect();
    if short.len() < 8 || !short.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let suffix = format!("-{short}.jsonl");
    let projects = std::fs::read_dir(Path::new(home).join(".gemini/tmp")).ok()?;
    let mut found: Vec<std::path::PathBuf> = projects
        .flatten()
        .filter_map(|project| std::fs::read_dir(project.path().join("chats")).ok())
        .flat_map(|chats| chats.flatten().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("session-") && name.ends_with(&suffix)
        })
        .collect();
    found.sort();
    found.pop()
}

/// Model messages remembered at most per run (for the live figures).
const MAX_LIVE_MESSAGES: usize = 100_000;

/// Parser for Gemini CLI `stream-json` output. One per agent.
#[derive(Debug, Default)]
pub struct GeminiParser {
    ledger: Ledger,
    cumulative: Cumulative,
    session_id: Option<String>,
    /// The assistant's reply in this run, bounded.
    reply: String,
    /// The settled total when this run began: its live figures count on top.
    run_base: TokenUsage,
    /// This run's model messages from the chat log: id → latest tokens.
    live: BTreeMap<String, TokenUsage>,
    /// Between an `init` and its `result`: chat-log lines count. Lines read
    /// after the result belong to the run it settled.
    running: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: Option<Value>,
    session_id: Option<Value>,
    model: Option<Value>,
    role: Option<Value>,
    content: Option<Value>,
    tool_name: Option<Value>,
    tool_id: Option<Value>,
    parameters: Option<Value>,
    status: Option<Value>,
    output: Option<Value>,
    error: Option<Value>,
    message: Option<Value>,
    stats: Option<Value>,
}

fn as_str(v: &Option<Value>) -> Option<&str> {
    v.as_ref().and_then(Value::as_str)
}

/// `result.stats` → tokens (see the module doc for the mapping); `None`
/// when the stats hold no token figure at all.
pub(crate) fn gemini_usage(stats: &Value) -> Option<TokenUsage> {
    let has = |k: &str| stats.get(k).is_some_and(Value::is_number);
    if !["total_tokens", "input_tokens", "output_tokens", "cached", "input"].iter().any(|k| has(k)) {
        return None;
    }
    let total = json_count(stats.get("total_tokens"));
    let prompt = json_count(stats.get("input_tokens"));
    let candidates = json_count(stats.get("output_tokens"));
    let cached = json_count(stats.get("cached"));
    let breakdown = has("input_tokens") || has("output_tokens") || has("cached") || has("input");
    if !breakdown {
        return Some(TokenUsage { input: total, ..TokenUsage::default() });
    }
    let input = if has("input") { json_count(stats.get("input")) } else { prompt.saturating_sub(cached) };
    let unlisted = total.saturating_sub(prompt.saturating_add(candidates));
    Some(TokenUsage { input, output: candidates.saturating_add(unlisted), cache_read: cached, cache_write: 0 })
}

impl GeminiParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// A run begins (`running`, at an `init`) or ends (at its `result`):
    /// the next run's live figures count on top of what is settled so far.
    fn start_run(&mut self, running: bool) {
        self.run_base = self.ledger.total();
        self.live.clear();
        self.running = running;
    }

    /// A chat-log line: a model message's tokens → unsettled usage.
    fn on_usage_log_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        if !self.running {
            return Vec::new();
        }
        let Ok(Value::Object(message)) = serde_json::from_slice::<Value>(line) else {
            return Vec::new();
        };
        let (Some("gemini"), Some(id), Some(tokens)) = (
            message.get("type").and_then(Value::as_str),
            message.get("id").and_then(Value::as_str),
            message.get("tokens"),
        ) else {
            return Vec::new();
        };
        let figures = serde_json::json!({
            "input_tokens": json_count(tokens.get("input")),
            "output_tokens": json_count(tokens.get("output")),
            "cached": json_count(tokens.get("cached")),
            "total_tokens": json_count(tokens.get("total")),
        });
        let Some(usage) = gemini_usage(&figures) else { return Vec::new() };
        if self.live.len() >= MAX_LIVE_MESSAGES && !self.live.contains_key(id) {
            return Vec::new();
        }
        self.live.insert(id.to_owned(), usage);
        let live = self.live.values().fold(TokenUsage::default(), |sum, u| sum.saturating_add(*u));
        let total = self.run_base.saturating_add(live).max(self.ledger.total());
        self.ledger.set(total, None, false, false).into_iter().collect()
    }

    fn on_message(&mut self, line: &Line) -> Vec<HarnessEvent> {
        match as_str(&line.role) {
            Some("assistant") => {
                let Some(text) = as_str(&line.content) else {
                    return Vec::new();
                };
                if self.reply.len() < RESULT_TEXT_MAX_CHARS * 4 {
                    self.reply.push_str(text);
                }
                progress(text).into_iter().collect()
            }
            Some("user") => {
                self.reply.clear();
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn on_result(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let mut events = Vec::new();
        if let Some(tokens) = line.stats.as_ref().and_then(gemini_usage) {
            let scope = self.session_id.as_deref().unwrap_or("");
            let (growth, _) = self.cumulative.advance(scope, Some(tokens), None);
            let total = self.run_base.saturating_add(growth);
            events.extend(self.ledger.set(total, None, true, true));
        }
        self.start_run(false);
        let success = as_str(&line.status) == Some("success");
        let error = line.error.as_ref();
        let reason =
            (!success).then(|| error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("error").to_owned());
        let text = match error.and_then(|e| e.get("message")).and_then(Value::as_str) {
            Some(message) if !success => result_text(message),
            _ => result_text(&self.reply),
        };
        self.reply.clear();
        events.push(HarnessEvent::Result { success, reason, text, session_id: self.session_id.clone() });
        events
    }
}

impl Parser for GeminiParser {
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        let parsed: Line = match parse_object(line) {
            Ok(parsed) => parsed,
            Err(events) => return events,
        };
        match as_str(&parsed.kind) {
            Some("init") => {
                let session_id = as_str(&parsed.session_id).map(str::to_owned);
                self.session_id = session_id.clone();
                self.reply.clear();
                self.start_run(true);
                vec![HarnessEvent::SessionStarted { session_id, model: as_str(&parsed.model).map(str::to_owned) }]
            }
            Some("message") => self.on_message(&parsed),
            Some("tool_use") => vec![HarnessEvent::ToolUse {
                id: as_str(&parsed.tool_id).map(str::to_owned),
                name: as_str(&parsed.tool_name).unwrap_or("tool").to_owned(),
                summary: parsed.parameters.as_ref().map(summarize_input).unwrap_or_default(),
            }],
            Some("tool_result") => {
                let is_error = as_str(&parsed.status) == Some("error");
                let error_message = parsed.error.as_ref().and_then(|e| e.get("message")).and_then(Value::as_str);
                let summary = match (error_message, parsed.output.as_ref()) {
                    (Some(m), _) if is_error => one_line(m, SUMMARY_MAX_CHARS),
                    (_, Some(output)) => summarize_output(output),
                    (Some(m), None) => one_line(m, SUMMARY_MAX_CHARS),
                    (None, None) => String::new(),
                };
                vec![HarnessEvent::ToolResult { id: as_str(&parsed.tool_id).map(str::to_owned), is_error, summary }]
            }
            Some("error") => {
                as_str(&parsed.message).and_then(|m| progress(&format!("error: {m}"))).into_iter().collect()
            }
            Some("result") => self.on_result(&parsed),
            _ => Vec::new(),
        }
    }

    fn totals(&self) -> UsageTotals {
        self.ledger.totals()
    }

    fn feed_usage_log_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        self.on_usage_log_line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage { input, output, cache_read, cache_write }
    }

    #[test]
    fn stats_mapping() {
        let v: Value =
            serde_json::from_str(r#"{"total_tokens":120,"input_tokens":100,"output_tokens":5,"cached":60,"input":40}"#)
                .unwrap();
        // input 40, cache 60, output 5 + (120-100-5 = 15 unlisted thinking/tool).
        assert_eq!(gemini_usage(&v), Some(t(40, 20, 60, 0)));
        let v: Value = serde_json::from_str(r#"{"total_tokens":77}"#).unwrap();
        assert_eq!(gemini_usage(&v), Some(t(77, 0, 0, 0)));
        let v: Value = serde_json::from_str(r#"{"duration_ms":5}"#).unwrap();
        assert_eq!(gemini_usage(&v), None);
    }

    #[test]
    fn resumed_session_counts_only_growth() {
        let mut p = GeminiParser::new();
        let init = r#"{"type":"init","session_id":"s1","model":"g"}"#;
        p.feed_line(init.as_bytes());
        p.feed_line(br#"{"type":"result","status":"success","stats":{"total_tokens":110,"input_tokens":100,"output_tokens":10,"cached":0,"input":100}}"#);
        // `--resume`: the stats were hydrated and grew by 50 in, 5 out.
        p.feed_line(init.as_bytes());
        p.feed_line(br#"{"type":"result","status":"success","stats":{"total_tokens":165,"input_tokens":150,"output_tokens":15,"cached":0,"input":150}}"#);
        assert_eq!(p.totals().tokens, t(150, 15, 0, 0));
    }

    #[test]
    fn the_chat_log_gives_live_usage_once_per_message_and_the_result_settles() {
        let mut p = GeminiParser::new();
        p.feed_line(br#"{"type":"init","session_id":"f9693f78-0000","model":"g"}"#);
        let message = |id: &str, input: u64| {
            format!(
                r#"{{"id":"{id}","type":"gemini","tokens":{{"input":{input},"output":50,"cached":200,"thoughts":4,"tool":0,"total":{}}},"model":"g"}}"#,
                input + 54
            )
        };
        let events = p.feed_usage_log_line(message("m1", 1000).as_bytes());
        assert_eq!(
            events,
            vec![HarnessEvent::Usage {
                delta: t(800, 54, 200, 0),
                total: t(800, 54, 200, 0),
                cost_usd: None,
                settled: false
            }]
        );
        // The same message again (rewritten with its tool calls, or the log
        // read again): nothing more.
        assert!(p.feed_usage_log_line(message("m1", 1000).as_bytes()).is_empty());
        assert!(p.feed_usage_log_line(br#"{"id":"u1","type":"user","content":"hi"}"#).is_empty());
        assert!(p.feed_usage_log_line(br#"{"$set":{"lastUpdated":"x"}}"#).is_empty());
        p.feed_usage_log_line(message("m2", 1000).as_bytes());
        assert_eq!(p.totals().tokens, t(1600, 108, 400, 0));
        // The result's stats settle the run.
        let events = p.feed_line(br#"{"type":"result","status":"success","stats":{"total_tokens":2108,"input_tokens":2000,"output_tokens":100,"cached":400,"input":1600}}"#);
        assert!(
            events.contains(&HarnessEvent::Usage {
                delta: t(0, 0, 0, 0),
                total: t(1600, 108, 400, 0),
                cost_usd: None,
                settled: true
            }),
            "{events:?}"
        );
        // A line of the settled run read late counts nothing; a second run
        // counts on top.
        assert!(p.feed_usage_log_line(message("m9", 1000).as_bytes()).is_empty());
        p.feed_line(br#"{"type":"init","session_id":"aaaaaaaa-1","model":"g"}"#);
        p.feed_usage_log_line(message("m3", 1000).as_bytes());
        assert_eq!(p.totals().tokens, t(2400, 162, 600, 0));
    }

    #[test]
    fn the_chat_log_is_found_by_the_session_ids_first_eight() {
        let home = tempfile::tempdir().unwrap();
        let chats = home.path().join(".gemini/tmp/ws/chats");
        std::fs::create_dir_all(&chats).unwrap();
        std::fs::write(chats.join("session-2026-12-01T11-25-f9693f78.jsonl"), "").unwrap();
        std::fs::write(chats.join("session-2026-12-01T11-25-0badcafe.jsonl"), "").unwrap();
        let env = BTreeMap::from([("HOME".to_string(), home.path().display().to_string())]);
        let found = usage_log(&env, "f9693f78-606c-486d-a75e-f09f2f303f9e").unwrap();
        assert!(found.ends_with("ws/chats/session-2026-12-01T11-25-f9693f78.jsonl"), "{}", found.display());
        assert_eq!(usage_log(&env, "12345678-no"), None);
        assert_eq!(usage_log(&env, "../../x"), None);
        let env = BTreeMap::from([
            ("GEMINI_CLI_HOME".to_string(), "/nowhere".to_string()),
            ("HOME".to_string(), home.path().display().to_string()),
        ]);
        assert_eq!(usage_log(&env, "f9693f78-606c"), None, "GEMINI_CLI_HOME wins over HOME");
    }

    #[test]
    fn failed_result_carries_error_type_and_message() {
        let mut p = GeminiParser::new();
        let events = p.feed_line(
            br#"{"type":"result","status":"error","error":{"type":"FatalTurnLimitedError","message":"too many turns"}}"#,
        );
        assert_eq!(
            events,
            vec![HarnessEvent::Result {
                success: false,
                reason: Some("FatalTurnLimitedError".into()),
                text: Some("too many turns".into()),
                session_id: None
            }]
        );
    }

    #[test]
    fn tools_become_use_and_result() {
        let mut p = GeminiParser::new();
        let events = p.feed_line(
            br#"{"type":"tool_use","tool_name":"read_file","tool_id":"t1","parameters":{"file_path":"a.txt"}}"#,
        );
        assert_eq!(
            events,
            vec![HarnessEvent::ToolUse { id: Some("t1".into()), name: "read_file".into(), summary: "a.txt".into() }]
        );
        let events = p.feed_line(
            br#"{"type":"tool_result","tool_id":"t1","status":"error","error":{"type":"x","message":"no such file"}}"#,
        );
        assert_eq!(
            events,
            vec![HarnessEvent::ToolResult { id: Some("t1".into()), is_error: true, summary: "no such file".into() }]
        );
    }
}
