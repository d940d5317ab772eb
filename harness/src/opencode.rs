//! opencode in its headless structured mode, all of it: how corral starts
//! it and how its output reads.
//!
//! - Launch: `opencode run --format json --title TITLE [--model M] EXTRA
//!   TASK`, its stdin `/dev/null`. TITLE is the task's first line (cut at
//!   [`TITLE_MAX_CHARS`]) unless EXTRA has a `--title` of its own: without
//!   one, opencode 1.18 makes a title call to the model that its JSON
//!   output never reports, which no meter reading that output could count.
//!   The model server comes from opencode's own configuration (a provider's
//!   `options.baseURL`, in `OPENCODE_CONFIG` or `OPENCODE_CONFIG_CONTENT`
//!   of the spawning environment, passed through).
//! - Delivery: `opencode run` reads no input once it has started, so a
//!   message is a follow-up process once the current one ends, continuing
//!   the same session: the launch command with `--session SESSION MESSAGE`
//!   in place of the task ([`resume_argv`]; opencode replays the session's
//!   history and makes no title call). Messages go one process each, in
//!   order. A new task for an ended agent continues its session the same
//!   way (a new run with the task when it has none).
//! - Output: its JSON lines become [`HarnessEvent`]s, and
//!   [`OpencodeParser`] keeps the agent's token usage and cost.
//!
//! Every line carries `type`, `timestamp`, `sessionID` and, for most types,
//! a `part` (opencode's `cli/cmd/run.ts` prints them from its event loop):
//!
//! - The first line of a session (and any change of `sessionID`) →
//!   `SessionStarted`.
//! - `text` → `Progress` (and remembered as the run's reply);
//!   `reasoning` → `Progress`.
//! - `tool_use` (printed once the tool has `completed` or hit an `error`) →
//!   `ToolUse` (`callID`, `tool`, summary of `state.input`) then
//!   `ToolResult` (error when `state.status` is `error`; summary of
//!   `state.error` or `state.output`).
//! - `step_finish` → a settled `Usage` for that step's `part.tokens` and
//!   `part.cost`; when its `reason` is anything but `tool-calls` the run is
//!   over → `Result` (success when the reason is `stop`, else the reason is
//!   the failure reason).
//! - `error` → a failed `Result` (reason `error.name`, text
//!   `error.data.message`).
//! - `done` (newer versions, when the session goes idle) → a `Result` if the
//!   run has not had one since its last `step_start`.
//! - `step_start` starts a run; anything else is ignored, and non-JSON lines
//!   are treated as described in [`crate::event`].
//!
//! ## Usage: summed over the steps
//!
//! Each `step_finish` carries that step's own `tokens` and `cost` (one model
//! call), so the totals are their sums; a `step_finish` part id seen before
//! is not counted twice. `tokens.input` excludes the cache and
//! `tokens.output` excludes reasoning: `total = input + output + reasoning +
//! cache.read + cache.write` (in the fixture 8279 = 237 + 39 + 67 + 7936 +
//! 0). Reasoning bills as output, so `output = tokens.output +
//! tokens.reasoning`, `input = tokens.input`, `cache_read =
//! tokens.cache.read`, `cache_write = tokens.cache.write`; cost is opencode's
//! own per-step figure in US dollars (0 for free or unpriced models).

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::event::{
    json_count, parse_object, progress, result_text, summarize_input, summarize_output, truncate_chars, HarnessEvent,
    Ledger, Parser, TokenUsage, UsageTotals,
};
use crate::launch::{push, without_task, Delivery, Input, Launch, Options};

// ---------------------------------------------------------------------------
// Launch and delivery.
// ---------------------------------------------------------------------------

/// The environment variable that names the `opencode` binary.
pub(crate) const PROGRAM_VARIABLE: &str = "CORRAL_OPENCODE_BIN";

/// Every run ends with a `step_finish` that is not `tool-calls`, or an `error`.
pub(crate) const REPORTS_RESULTS: bool = true;

/// Messages are follow-up processes continuing the session.
pub(crate) const DELIVERY: Delivery = Delivery::Resume;

/// The launch of `program` for `task`; `extra` goes after corral's own
/// arguments, the task last.
pub(crate) fn launch(program: &str, task: &str, options: &Options, extra: &[String]) -> Launch {
    let mut argv = vec![program.to_string()];
    push(&mut argv, &["run", "--format", "json"]);
    let titled = extra.iter().any(|arg| arg == "--title" || arg.starts_with("--title="));
    if !titled {
        // One word, so a title that starts with `-` is not read as a flag.
        argv.push(format!("--title={}", title(task)));
    }
    if let Some(model) = options.model {
        push(&mut argv, &["--model", model]);
    }
    argv.extend_from_slice(extra);
    // After `--`: a task that starts with `-` is the message, not a flag.
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

/// Longest session title corral gives opencode, in `char`s.
pub(crate) const TITLE_MAX_CHARS: usize = 60;

/// The session title for `task`: its first non-empty line, cut (never
/// empty: opencode would make its title call for an empty one).
fn title(task: &str) -> String {
    let line = task.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("corral agent");
    truncate_chars(line, TITLE_MAX_CHARS)
}

/// The command that continues session `session` with `text`, from the
/// agent's launch command: its options stay (a `--session` of its own
/// gives way), the task gives way to `--session SESSION TEXT`.
pub(crate) fn resume_argv(launch_argv: &[String], session: &str, text: &str) -> Vec<String> {
    let options = options_of(launch_argv);
    let mut argv = Vec::with_capacity(options.len() + 4);
    let mut skip_value = false;
    for arg in options {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--session" || arg == "-s" {
            skip_value = true;
            continue;
        }
        if arg.starts_with("--session=") {
            continue;
        }
        argv.push(arg);
    }
    push(&mut argv, &["--session", session, "--", text]);
    argv
}

/// An ended agent's next run with `task`: continuing its session when it
/// has one, else the launch command with the new task.
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

/// Gives opencode the private state folder `folder`: its data (sessions),
/// state and cache folders go there (`XDG_DATA_HOME`, `XDG_STATE_HOME`,
/// `XDG_CACHE_HOME`); it reads its configuration where the person keeps it.
pub(crate) fn private_state(folder: &Path) -> Vec<(String, String)> {
    ["XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"]
        .into_iter()
        .map(|name| {
            let sub = name.trim_start_matches("XDG_").trim_end_matches("_HOME").to_ascii_lowercase();
            (name.to_string(), folder.join(sub).display().to_string())
        })
        .collect()
}

/// Step ids remembered at most (for dedupe); plenty for one agent.
const MAX_STEP_IDS: usize = 100_000;

/// Parser for `opencode run --format json` output. One per agent.
#[derive(Debug, Default)]
pub struct OpencodeParser {
    ledger: Ledger,
    session_id: Option<String>,
    counted_steps: HashSet<String>,
    /// A Result was reported since the last `step_start`.
    result_reported: bool,
    last_text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: Option<Value>,
    #[serde(rename = "sessionID")]
    session_id: Option<Value>,
    part: Option<Value>,
    error: Option<Value>,
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A step's `part.tokens` → tokens (see the module doc for the mapping).
pub(crate) fn opencode_usage(tokens: &Value) -> TokenUsage {
    let cache = tokens.get("cache");
    TokenUsage {
        input: json_count(tokens.get("input")),
        output: json_count(tokens.get("output")).saturating_add(json_count(tokens.get("reasoning"))),
        cache_read: json_count(cache.and_then(|c| c.get("read"))),
        cache_write: json_count(cache.and_then(|c| c.get("write"))),
    }
}

impl OpencodeParser {
    pub fn new() -> Self {
        Self::default()
    }

    fn result(&mut self, success: bool, reason: Option<String>, text: Option<String>) -> HarnessEvent {
        self.result_reported = true;
        HarnessEvent::Result { success, reason, text, session_id: self.session_id.clone() }
    }

    fn on_step_finish(&mut self, part: &Value) -> Vec<HarnessEvent> {
        let mut events = Vec::new();
        let fresh = match str_field(part, "id") {
            Some(id) => {
                if self.counted_steps.len() >= MAX_STEP_IDS {
                    self.counted_steps.clear();
                }
                self.counted_steps.insert(id.to_owned())
            }
            None => true,
        };
        if fresh {
            let tokens = part.get("tokens").filter(|t| t.is_object()).map(opencode_usage).unwrap_or_default();
            // opencode says 0 for a model its config does not price: for a
            // step that used tokens, that is no cost reported, not a free
            // call (corral's `[prices]` may price it).
            let cost = part
                .get("cost")
                .and_then(Value::as_f64)
                .filter(|c| c.is_finite() && *c >= 0.0)
                .filter(|c| *c > 0.0 || tokens.is_zero());
            let total = self.ledger.total().saturating_add(tokens);
            let cost_total = cost.map(|c| self.ledger.totals().cost_usd.unwrap_or(0.0) + c);
            events.extend(self.ledger.set(total, cost_total, true, true));
        }
        let reason = str_field(part, "reason").unwrap_or("");
        if !reason.is_empty() && reason != "tool-calls" && !self.result_reported {
            let success = reason == "stop";
            let text = if success { self.last_text.take() } else { None };
            let failure = (!success).then(|| reason.to_owned());
            events.push(self.result(success, failure, text));
        }
        events
    }

    fn on_tool_use(&mut self, part: &Value) -> Vec<HarnessEvent> {
        let id = str_field(part, "callID").or_else(|| str_field(part, "id")).map(str::to_owned);
        let name = str_field(part, "tool").unwrap_or("tool").to_owned();
        let state = part.get("state");
        let summary = state.and_then(|s| s.get("input")).map(summarize_input).unwrap_or_default();
        let mut events = vec![HarnessEvent::ToolUse { id: id.clone(), name, summary }];
        let status = state.and_then(|s| str_field(s, "status")).unwrap_or("");
        if matches!(status, "completed" | "error") {
            let is_error = status == "error";
            let summary = if is_error {
                state.and_then(|s| s.get("error")).map(summarize_output).unwrap_or_default()
            } else {
                state.and_then(|s| s.get("output")).map(summarize_output).unwrap_or_default()
            };
            events.push(HarnessEvent::ToolResult { id, is_error, summary });
        }
        events
    }

    fn on_error(&mut self, line: &Line) -> Vec<HarnessEvent> {
        let error = line.error.as_ref();
        let name = error.and_then(|e| str_field(e, "name")).unwrap_or("error").to_owned();
        let message = error
            .and_then(|e| e.get("data"))
            .and_then(|d| str_field(d, "message"))
            .or_else(|| error.and_then(|e| str_field(e, "message")))
            .and_then(result_text);
        vec![self.result(false, Some(name), message)]
    }
}

impl Parser for OpencodeParser {
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        let parsed: Line = match parse_object(line) {
            Ok(parsed) => parsed,
            Err(events) => return events,
        };
        let Some(kind) = parsed.kind.as_ref().and_then(Value::as_str) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        if let Some(session) = parsed.session_id.as_ref().and_then(Value::as_str) {
            if self.session_id.as_deref() != Some(session) {
                self.session_id = Some(session.to_owned());
                events.push(HarnessEvent::SessionStarted { session_id: Some(session.to_owned()), model: None });
            }
        }
        let part = parsed.part.as_ref().filter(|p| p.is_object());
        match (kind, part) {
            ("step_start", _) => {
                self.result_reported = false;
            }
            ("text", Some(part)) => {
                if let Some(text) = str_field(part, "text") {
                    events.extend(progress(text));
                    if let Some(text) = result_text(text) {
                        self.last_text = Some(text);
                    }
                }
            }
            ("reasoning", Some(part)) => {
                events.extend(str_field(part, "text").and_then(progress));
            }
            ("tool_use", Some(part)) => events.extend(self.on_tool_use(part)),
            ("step_finish", Some(part)) => events.extend(self.on_step_finish(part)),
            ("error", _) => events.extend(self.on_error(&parsed)),
            ("done", _) if !self.result_reported => {
                let text = self.last_text.take();
                events.push(self.result(true, None, text));
            }
            _ => {}
        }
        events
    }

    fn totals(&self) -> UsageTotals {
        self.ledger.totals()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage { input, output, cache_read, cache_write }
    }

    fn step_finish(id: &str, reason: &str, cost: f64) -> String {
        format!(
            r#"{{"type":"step_finish","sessionID":"s","part":{{"id":"{id}","reason":"{reason}","type":"step-finish","tokens":{{"input":10,"output":2,"reasoning":3,"cache":{{"write":4,"read":5}}}},"cost":{cost}}}}}"#
        )
    }

    #[test]
    fn every_run_has_a_title_so_no_model_call_goes_unreported() {
        let argv = launch("opencode", "\n  Fix the parser\nthen the tests", &Options::default(), &[]).argv;
        assert_eq!(
            argv,
            [
                "opencode",
                "run",
                "--format",
                "json",
                "--title=Fix the parser",
                "--",
                "\n  Fix the parser\nthen the tests"
            ]
        );
        let long = "x".repeat(200);
        let argv = launch("opencode", &long, &Options::default(), &[]).argv;
        assert_eq!(argv[4].chars().count(), "--title=".len() + TITLE_MAX_CHARS);
        // A task that starts with `-` (a list item) is neither a flag nor
        // a title's flag.
        let argv = launch("opencode", "- fix it", &Options::default(), &[]).argv;
        assert_eq!(&argv[4..], ["--title=- fix it", "--", "- fix it"]);
        // The person's own title wins, in either form.
        for own in [vec!["--title".to_string(), "mine".into()], vec!["--title=mine".to_string()]] {
            let argv = launch("opencode", "task", &Options::default(), &own).argv;
            assert_eq!(argv.iter().filter(|a| a.starts_with("--title")).count(), 1, "{argv:?}");
        }
        assert_eq!(title("   \n\n"), "corral agent");
    }

    #[test]
    fn a_message_continues_the_session_in_a_follow_up_run() {
        let argv = launch("opencode", "first", &Options { model: Some("mock/m"), ..Options::default() }, &[]).argv;
        assert_eq!(
            resume_argv(&argv, "ses_1", "more"),
            [
                "opencode",
                "run",
                "--format",
                "json",
                "--title=first",
                "--model",
                "mock/m",
                "--session",
                "ses_1",
                "--",
                "more"
            ]
        );
        // A session given after `--` gives way to the agent's own.
        let own: Vec<String> = ["opencode", "run", "-s", "old", "--session=older", "task"].map(String::from).to_vec();
        assert_eq!(resume_argv(&own, "ses_2", "x"), ["opencode", "run", "--session", "ses_2", "--", "x"]);
        assert_eq!(next_task(&argv, None, "second").0.last().map(String::as_str), Some("second"));
        assert_eq!(next_task(&argv, Some("ses_1"), "second").0, resume_argv(&argv, "ses_1", "second"));
    }

    #[test]
    fn steps_are_summed_once_each_with_cost() {
        let mut p = OpencodeParser::new();
        p.feed_line(step_finish("a", "tool-calls", 0.01).as_bytes());
        p.feed_line(step_finish("a", "tool-calls", 0.01).as_bytes());
        p.feed_line(step_finish("b", "stop", 0.02).as_bytes());
        // Two distinct steps of (10, 2+3, 5, 4).
        assert_eq!(p.totals().tokens, t(20, 10, 10, 8));
        let cost = p.totals().cost_usd.unwrap();
        assert!((cost - 0.03).abs() < 1e-12, "{cost}");
    }

    #[test]
    fn error_is_a_failed_result_and_done_does_not_repeat_it() {
        let mut p = OpencodeParser::new();
        p.feed_line(br#"{"type":"step_start","sessionID":"s","part":{"type":"step-start"}}"#);
        let events = p.feed_line(
            br#"{"type":"error","sessionID":"s","error":{"name":"ProviderAuthError","data":{"message":"no key"}}}"#,
        );
        assert_eq!(
            events.last(),
            Some(&HarnessEvent::Result {
                success: false,
                reason: Some("ProviderAuthError".into()),
                text: Some("no key".into()),
                session_id: Some("s".into())
            })
        );
        assert!(p.feed_line(br#"{"type":"done","sessionID":"s","reason":"idle"}"#).is_empty());
    }

    #[test]
    fn tool_error_state_is_a_tool_error() {
        let mut p = OpencodeParser::new();
        let events = p.feed_line(
            br#"{"type":"tool_use","sessionID":"s","part":{"type":"tool","tool":"bash","callID":"c1","state":{"status":"error","input":{"command":"false"},"error":"exit 1"}}}"#,
        );
        assert_eq!(
            &events[1..],
            &[
                HarnessEvent::ToolUse { id: Some("c1".into()), name: "bash".into(), summary: "false".into() },
                HarnessEvent::ToolResult { id: Some("c1".into()), is_error: true, summary: "exit 1".into() }
            ]
        );
    }
}
