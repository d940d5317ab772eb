//! What corral shows a person rather than a script: one readable line per
//! event (`corral events -f` on a terminal, `corral top`, the demo), and
//! the readable text of a structured agent's output (`corral view`, the
//! panes of `corral top`), made from the harness parsers' events instead
//! of raw JSON lines.
//!
//! Owns: the wording. Never does: I/O beyond reading what it is handed;
//! the callers decide when a person is watching (a terminal) and when a
//! script is (JSON).

use std::io::IsTerminal;

use chrono::{DateTime, Local, Utc};
use corral_harness::{Harness, HarnessEvent};

use crate::cli::commands::{human_count, human_secs};
use crate::model::event::{Event, EventBody};
use crate::sys::output::clean_line;

/// The longest one-line text a line of `events -f` carries (the journal
/// keeps it all).
const LINE_MAX_CHARS: usize = 160;

/// True when color may be used on a stream that is a terminal: only then,
/// and never when `NO_COLOR` is set to anything non-empty (no-color.org).
pub fn color_allowed(stream_is_terminal: bool) -> bool {
    stream_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// True when standard output is a terminal: a person reads it.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// How an event's type reads at a glance, for coloring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Ordinary chatter: output, progress, usage.
    Plain,
    /// A step forward: started, ready, merged, succeeded.
    Good,
    /// Needs a look: warnings, waiting merges, restarts.
    Warn,
    /// Went wrong: failures, conflicts, budgets spent.
    Bad,
    /// What the agent did: tool calls, messages.
    Action,
}

impl Tone {
    /// The ANSI color code of the tone (`None`: the terminal's own).
    fn ansi(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some("32"),
            Tone::Warn => Some("33"),
            Tone::Bad => Some("31"),
            Tone::Action => Some("36"),
        }
    }
}

/// The tone of an event.
pub fn tone(body: &EventBody) -> Tone {
    use crate::model::lifecycle::AgentState;
    match body {
        EventBody::Started { .. } | EventBody::Adopted { .. } | EventBody::Merged { .. } => Tone::Good,
        EventBody::Probe { change, .. } if change == "ready" || change == "passed" => Tone::Good,
        EventBody::Probe { .. } => Tone::Warn,
        EventBody::Exited { state: AgentState::Succeeded, .. } => Tone::Good,
        EventBody::Exited { state: AgentState::Stopped, .. } => Tone::Warn,
        EventBody::Exited { .. } => Tone::Bad,
        EventBody::Result { success, .. } => match success {
            true => Tone::Good,
            false => Tone::Bad,
        },
        EventBody::BudgetWarning { .. }
        | EventBody::Paused { .. }
        | EventBody::Restarted { .. }
        | EventBody::MergeWaiting { .. }
        | EventBody::StopRequested { .. }
        | EventBody::JournalRepaired { .. }
        | EventBody::JournalResumed { .. }
        | EventBody::Queued {} => Tone::Warn,
        EventBody::BudgetExceeded { .. }
        | EventBody::SpawnFailed { .. }
        | EventBody::Conflict { .. }
        | EventBody::GateFailed { .. }
        | EventBody::MergeRefused { .. } => Tone::Bad,
        EventBody::ToolResult { is_error: true, .. } => Tone::Bad,
        EventBody::ToolUse { .. }
        | EventBody::ToolResult { .. }
        | EventBody::MessageSent { .. }
        | EventBody::MessageDelivered { .. }
        | EventBody::NoticeSent { .. }
        | EventBody::NoticeDelivered { .. } => Tone::Action,
        _ => Tone::Plain,
    }
}

/// One event as one line for a person: local time, agent, what happened.
///
/// ```text
/// 10:42:07  /root/api       → Bash: cargo test
/// ```
pub fn event_line(event: &Event, color: bool) -> String {
    let at: DateTime<Local> = event.ts.with_timezone(&Local);
    let who = event.agent.as_ref().map_or_else(|| "corral".to_string(), |a| a.to_string());
    let text = one_line(&event_text(&event.body), LINE_MAX_CHARS);
    match tone(&event.body).ansi().filter(|_| color) {
        Some(code) => format!("\x1b[2m{}\x1b[0m  {who:<16} \x1b[{code}m{text}\x1b[0m", at.format("%H:%M:%S")),
        None if color => format!("\x1b[2m{}\x1b[0m  {who:<16} {text}", at.format("%H:%M:%S")),
        None => format!("{}  {who:<16} {text}", at.format("%H:%M:%S")),
    }
}

/// What an event says, in words (may span lines for long text; see
/// [`one_line`]).
pub fn event_text(body: &EventBody) -> String {
    match body {
        EventBody::DaemonStarted { pid } => format!("daemon started (pid {pid})"),
        EventBody::JournalRepaired { line, reason, moved_to, .. } => {
            format!("journal repaired at line {line} ({reason}); the rest is kept in {}", moved_to.display())
        }
        EventBody::JournalResumed { error, failed, dropped_output, .. } => format!(
            "the journal can be written again ({failed} appends failed: {error}; {dropped_output} output lines left out)"
        ),
        EventBody::Spawned { harness, task_text, branch, budget, .. } => {
            let mut text = format!("spawned ({harness}) on {branch}");
            let limits = budget_words(budget);
            if !limits.is_empty() {
                text.push_str(&format!(", budget {limits}"));
            }
            if !task_text.is_empty() {
                text.push_str(&format!(": {task_text}"));
            }
            text
        }
        EventBody::Queued {} => "pending: waits for a free slot (max_threads)".into(),
        EventBody::SpawnFailed { reason } => format!("could not start: {reason}"),
        EventBody::Started { pid, .. } => format!("started (pid {pid})"),
        EventBody::Adopted { pid, .. } => format!("adopted by the new daemon (pid {pid})"),
        EventBody::Output { text, skipped, .. } => match (text.is_empty(), *skipped) {
            (true, n) => format!("({n} lines left out here; `corral logs` has them)"),
            (false, 0) => text.clone(),
            (false, n) => format!("{text}  ({n} lines left out before it)"),
        },
        EventBody::SessionStarted { session_id, model, .. } => {
            let mut text = "session started".to_string();
            if let Some(model) = model {
                text.push_str(&format!(", model {model}"));
            }
            if let Some(id) = session_id {
                text.push_str(&format!(", id {id}"));
            }
            text
        }
        EventBody::Progress { text, .. } => text.clone(),
        EventBody::ToolUse { name, summary, .. } => tool_use(name, summary),
        EventBody::ToolResult { is_error, summary, .. } => tool_result(*is_error, summary),
        EventBody::Usage { delta, total, cost_usd, .. } => {
            let mut text = format!("used {} tokens, {} in all", human_count(delta.total()), human_count(total.total()));
            if let Some(cost) = cost_usd {
                text.push_str(&format!(", {}", usd(*cost)));
            }
            text
        }
        EventBody::ModelCall { call, provider, model, status, usage, cost_usd, flag, refused, duration_ms, .. } => {
            let model = model.as_deref().unwrap_or("?");
            match refused {
                Some(why) => format!("model call {call} ({}, {model}) refused: {why}", provider.name()),
                None => {
                    let mut text = format!(
                        "model call {call} ({}, {model}): {status}, {} tokens ({} in, {} out) in {:.0} ms",
                        provider.name(),
                        human_count(usage.total()),
                        human_count(usage.input + usage.cache_read + usage.cache_write),
                        human_count(usage.output),
                        duration_ms
                    );
                    if let Some(cost) = cost_usd {
                        text.push_str(&format!(", {}", usd(*cost)));
                    }
                    if let Some(flag) = flag {
                        text.push_str(&format!(" (charged its estimate: {flag})"));
                    }
                    text
                }
            }
        }
        EventBody::Result { success, reason, text, .. } => result(*success, reason.as_deref(), text.as_deref()),
        EventBody::MessageSent { message_id, from, text, .. } => format!("message {message_id} from {from}: {text:?}"),
        EventBody::MessageDelivered { message_id } => format!("message {message_id} delivered"),
        EventBody::NoticeSent { to, text, .. } => format!("notice for {to}: {text}"),
        EventBody::NoticeDelivered { from, .. } => format!("notice from {from} delivered"),
        EventBody::InputClosed {} => "input closed: its task is done and no message waits".into(),
        EventBody::BudgetWarning { kind, used, limit } => {
            format!("budget warning: {} ({:.0}%)", kind.describe(*used, *limit), percent(*used, *limit))
        }
        EventBody::BudgetExceeded { kind, used, limit } => {
            format!("budget exceeded: {}; stopping it and its subtree", kind.describe(*used, *limit))
        }
        EventBody::Paused { kind, used, limit, owner } => {
            format!("paused: {} (budget of {owner}); `corral budget {owner}` raises it", kind.describe(*used, *limit))
        }
        EventBody::Resumed { kind, limit } => format!("resumed: its {} budget is now {limit}", kind.as_str()),
        EventBody::BudgetRaised { kind, added, limit, by } => {
            format!("budget raised by {by}: {} +{added} to {limit}", kind.as_str())
        }
        EventBody::Probe { probe, kind, change, message, .. } => {
            let change = change.replace('_', " ");
            match message.is_empty() {
                true => format!("{probe} probe ({kind}): {change}"),
                false => format!("{probe} probe ({kind}): {change}: {message}"),
            }
        }
        EventBody::Restarted { count, reason, backoff_secs, .. } => {
            format!("restart #{count} in {}: {reason}", human_secs(*backoff_secs))
        }
        EventBody::Assigned { task_text, .. } => format!("assigned a new task: {task_text}"),
        EventBody::TaskQueued { task_id, task_text } => format!("task {task_id} queued for when it finishes: {task_text}"),
        EventBody::MergeQueued { .. } => "merge queued".into(),
        EventBody::MergeStarted { target, strategy, .. } => {
            format!("merging onto {target} ({})", serde_plain(strategy))
        }
        EventBody::Merged { target, commit, commits, rescued, kept } => {
            let short = &commit[..commit.len().min(10)];
            let mut line = match (commits, rescued.is_empty() && kept.is_empty()) {
                (0, true) => format!("merged: nothing new for {target}"),
                (0, false) => format!("merged into {target} at {short} (finished after a crash)"),
                (1, _) => format!("merged into {target} at {short} (1 commit)"),
                (n, _) => format!("merged into {target} at {short} ({n} commits)"),
            };
            if !rescued.is_empty() {
                let copies: Vec<String> = rescued.iter().map(|p| p.display().to_string()).collect();
                line.push_str(&format!("; files the crash cut short were copied first: {}", copies.join(", ")));
            }
            if !kept.is_empty() {
                line.push_str(&format!("; files changed in the checkout meanwhile were kept as they were: {}", kept.join(", ")));
            }
            line
        }
        EventBody::Conflict { files } => format!("merge conflict in {}; its branch is kept", files.join(", ")),
        EventBody::GateFailed { code, output } => {
            let last = output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
            match code {
                Some(code) => format!("gate failed (exit {code}): {last}"),
                None => format!("gate failed: {last}"),
            }
        }
        EventBody::MergeWaiting { why, .. } => format!("merge waits: {why}"),
        EventBody::MergeRefused { why } => format!("merge refused: {why}"),
        EventBody::StopRequested { grace_secs, budget } => match budget {
            Some(kind) => format!("stopping: its {} budget is spent (grace {})", kind.as_str(), human_secs(*grace_secs)),
            None => format!("stop requested (grace {})", human_secs(*grace_secs)),
        },
        EventBody::Exited { state, code, signal, reason } => {
            let mut text = format!("ended: {}", state.as_str());
            match (code, signal) {
                (Some(code), _) => text.push_str(&format!(" (exit {code})")),
                (None, Some(signal)) => text.push_str(&format!(" (signal {signal})")),
                _ => {}
            }
            if let Some(reason) = reason {
                text.push_str(&format!(": {reason}"));
            }
            text
        }
        EventBody::Removed { worktree, deleted_branch } => match deleted_branch {
            Some(branch) => format!("worktree {} removed, branch {branch} deleted", worktree.display()),
            None => format!("worktree {} removed; its branch stays", worktree.display()),
        },
    }
}

/// The lines an event adds to an agent's readable output (the pane of
/// `corral top`): what it printed, said and did, and messages to it;
/// nothing for bookkeeping (usage, merges, starts).
pub fn output_lines(body: &EventBody) -> Vec<String> {
    match body {
        EventBody::Output { text, .. } if !text.is_empty() => vec![text.clone()],
        EventBody::Progress { text, .. } => text.lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect(),
        EventBody::ToolUse { name, summary, .. } => vec![tool_use(name, summary)],
        EventBody::ToolResult { is_error, summary, .. } => vec![tool_result(*is_error, summary)],
        EventBody::Result { success, reason, text, .. } => vec![result(*success, reason.as_deref(), text.as_deref())],
        EventBody::MessageSent { from, text, .. } => vec![format!("✉ from {from}: {text}")],
        EventBody::Exited { .. } | EventBody::BudgetExceeded { .. } | EventBody::Restarted { .. } => {
            vec![format!("── {}", event_text(body))]
        }
        _ => Vec::new(),
    }
}

/// True for the events worth a row's "last event" cell in `corral top`:
/// what the agent did or what happened to it, not its chatter or usage.
pub fn is_notable(body: &EventBody) -> bool {
    !matches!(
        body,
        EventBody::Output { .. }
            | EventBody::Progress { .. }
            | EventBody::Usage { .. }
            | EventBody::ModelCall { .. }
            | EventBody::DaemonStarted { .. }
    )
}

/// The readable text of what a harness parser saw in one line.
pub fn harness_lines(event: &HarnessEvent) -> Vec<String> {
    match event {
        HarnessEvent::SessionStarted { model, .. } => match model {
            Some(model) => vec![format!("── session started ({model})")],
            None => vec!["── session started".into()],
        },
        HarnessEvent::Progress { text } => text.lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect(),
        HarnessEvent::ToolUse { name, summary, .. } => vec![tool_use(name, summary)],
        HarnessEvent::ToolResult { is_error, summary, .. } => vec![tool_result(*is_error, summary)],
        HarnessEvent::Usage { .. } => Vec::new(),
        HarnessEvent::Result { success, reason, text, .. } => {
            let mut lines = vec![result(*success, reason.as_deref(), None)];
            if let Some(text) = text {
                lines.extend(text.lines().map(|l| format!("  {l}")));
            }
            lines
        }
    }
}

/// An agent's output log made readable: for a structured CLI, its
/// messages, tool calls and results through the harness's parser (not its
/// JSON lines); for a plain command, its lines without escape codes.
pub fn readable_log(harness: Harness, bytes: &[u8]) -> Vec<String> {
    let lines = bytes.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    match harness.parser() {
        Some(mut parser) => {
            let mut out = Vec::new();
            for line in lines {
                for event in parser.feed_line(line) {
                    out.extend(harness_lines(&event));
                }
            }
            out
        }
        None => lines.map(clean_line).filter(|l| !l.is_empty()).collect(),
    }
}

fn tool_use(name: &str, summary: &str) -> String {
    match summary.is_empty() {
        true => format!("→ {name}"),
        false => format!("→ {name}: {summary}"),
    }
}

fn tool_result(is_error: bool, summary: &str) -> String {
    let word = if is_error { "error" } else { "ok" };
    match summary.is_empty() {
        true => format!("← {word}"),
        false => format!("← {word}: {summary}"),
    }
}

fn result(success: bool, reason: Option<&str>, text: Option<&str>) -> String {
    let mut line = match (success, reason) {
        (true, _) => "result: success".to_string(),
        (false, Some(reason)) => format!("result: error ({reason})"),
        (false, None) => "result: error".to_string(),
    };
    if let Some(text) = text.filter(|t| !t.trim().is_empty()) {
        line.push_str(&format!(": {text}"));
    }
    line
}

/// A budget's limits in words: `tokens 50.0k, cost $2.00, wall 30m00s`.
pub fn budget_words(budget: &crate::model::budget::Budget) -> String {
    let mut parts = Vec::new();
    if let Some(tokens) = budget.tokens {
        parts.push(format!("tokens {}", human_count(tokens)));
    }
    if let Some(tokens) = budget.output_tokens {
        parts.push(format!("output tokens {}", human_count(tokens)));
    }
    if let Some(cost) = budget.cost {
        parts.push(format!("cost {}", usd(cost)));
    }
    if let Some(wall) = budget.wall {
        parts.push(format!("wall {}", human_secs(wall.as_secs_f64())));
    }
    if let Some(idle) = budget.idle {
        parts.push(format!("idle {}", human_secs(idle.as_secs_f64())));
    }
    parts.join(", ")
}

/// Dollars as a person reads them: `$0.0123`, `$1.25`.
pub fn usd(cost: f64) -> String {
    if cost != 0.0 && cost.abs() < 0.1 {
        format!("${cost:.4}")
    } else {
        format!("${cost:.2}")
    }
}

/// A limit in dollars, shortly: `$2`, `$2.50`, `$0.0500`.
pub fn usd_short(limit: f64) -> String {
    if limit >= 1.0 && limit.fract() == 0.0 {
        format!("${limit:.0}")
    } else {
        usd(limit)
    }
}

fn percent(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        used / limit * 100.0
    } else {
        100.0
    }
}

/// A value's serde name (`"squash"` for a strategy), without quotes.
fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// `text` on one line: line breaks become ` ⏎ `, control characters go,
/// cut to `max` chars with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push_str(" ⏎ ");
        }
        out.extend(line.chars().filter(|c| !c.is_control()));
    }
    truncate(&out, max)
}

/// `text` cut to at most `max` chars, `…` marking the cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// How long ago `ts` was, shortly: `4s`, `3m`, `2h`.
pub fn ago(ts: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - ts).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::address::Address;

    fn event(body: EventBody) -> Event {
        Event {
            v: 1,
            seq: 3,
            ts: "2026-11-21T10:00:00Z".parse().unwrap(),
            agent: Some(Address::parse("/root/api").unwrap()),
            parent: Some(Address::root()),
            task: Some("t-1".into()),
            body,
        }
    }

    #[test]
    fn an_event_is_one_line_with_its_agent_and_no_json() {
        let line = event_line(
            &event(EventBody::ToolUse { id: None, name: "Bash".into(), summary: "cargo test".into(), offset: 9 }),
            false,
        );
        assert!(line.ends_with("/root/api        → Bash: cargo test"), "{line}");
        assert!(!line.contains('{'), "{line}");
        let progress = event_line(&event(EventBody::Progress { text: "a\nb".into(), offset: 1, skipped: 0 }), false);
        assert!(progress.ends_with("a ⏎ b"), "{progress}");
        assert!(!progress.contains('\n'));
    }

    #[test]
    fn color_only_when_asked_for() {
        let body =
            EventBody::BudgetExceeded { kind: crate::model::budget::BudgetKind::Tokens, used: 1200.0, limit: 1000.0 };
        let plain = event_line(&event(body.clone()), false);
        assert!(!plain.contains('\x1b'), "{plain}");
        assert!(plain.contains("budget exceeded: tokens 1200 of 1000"), "{plain}");
        let colored = event_line(&event(body), true);
        assert!(colored.contains("\x1b[31m"), "{colored}");
    }

    #[test]
    fn a_claude_log_reads_as_text_not_json() {
        let log = concat!(
            r#"{"type":"system","subtype":"init","session_id":"s-1","model":"claude-sonnet-4-5"}"#,
            "\n",
            r#"{"type":"assistant","message":{"id":"m1","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Looking at the tests."},{"type":"tool_use","id":"tu1","name":"Bash","input":{"command":"cargo test"}}],"usage":{"input_tokens":10,"output_tokens":5}},"session_id":"s-1"}"#,
            "\n",
            r#"{"type":"result","subtype":"success","is_error":false,"result":"All green.","session_id":"s-1","usage":{"input_tokens":10,"output_tokens":5}}"#,
            "\n"
        );
        let lines = readable_log(Harness::Claude, log.as_bytes());
        let text = lines.join("\n");
        assert!(text.contains("Looking at the tests."), "{text}");
        assert!(text.contains("→ Bash: cargo test"), "{text}");
        assert!(text.contains("result: success"), "{text}");
        assert!(text.contains("All green."), "{text}");
        assert!(!text.contains("\"type\""), "{text}");
    }

    #[test]
    fn a_plain_log_loses_its_escape_codes() {
        let lines = readable_log(Harness::Generic, b"\x1b[31mred\x1b[0m\r\n\nplain\n");
        assert_eq!(lines, ["red", "plain"]);
    }

    #[test]
    fn one_line_cuts_and_joins() {
        assert_eq!(one_line("abc\ndef", 100), "abc ⏎ def");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(usd(0.01234), "$0.0123");
        assert_eq!(usd(2.5), "$2.50");
    }
}
