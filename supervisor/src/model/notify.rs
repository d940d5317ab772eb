//! Notices upward: what a child tells its parent agent, and when.
//!
//! A child whose parent is an agent reports to it through the parent's
//! own message channel (Claude Code: a user message between turns; Codex:
//! a resumed turn; a plain CLI: typed into its terminal), journaled and
//! delivered once like `corral send`:
//! - `completion` (the default for a child of an agent): when the child
//!   ends, in any terminal state, and again when its merge settles;
//! - `progress`: also a digest of what it did, at most once per
//!   `[supervisor] progress_interval` (default 30 s) and only when it did
//!   something;
//! - `none`: nothing. Children of `/root` get nothing (a person has
//!   `events -f`, `wait` and `top`).
//!
//! A notice is one line (a plain CLI reads it as one line of input): a
//! result's lines are joined with ` | `. This module writes the notices'
//! text from records and counts; it does no I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::lifecycle::{AgentRecord, MergeState};

/// How much a child tells its parent agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Notify {
    /// When it ends, and when its merge settles.
    Completion,
    /// Also a digest of its progress while it runs.
    Progress,
    /// Nothing.
    None,
}

impl Notify {
    /// What a child gets when nothing says: `completion` under an agent,
    /// nothing under `/root`.
    pub fn default_for(parent_is_agent: bool) -> Notify {
        if parent_is_agent {
            Notify::Completion
        } else {
            Notify::None
        }
    }

    pub fn on_completion(self) -> bool {
        self != Notify::None
    }
}

/// Lines of a plain CLI's output its notice carries as its result.
pub const RESULT_TAIL_LINES: usize = 10;

/// What a child's notice gives as its result: a structured CLI's final
/// message, else the last lines of its output (`tail`, read only then).
pub fn result_text(child: &AgentRecord, tail: impl FnOnce() -> Vec<String>) -> Option<String> {
    child.result.as_ref().and_then(|r| r.text.clone()).or_else(|| {
        let lines = tail();
        (!lines.is_empty()).then(|| lines.join("\n"))
    })
}

/// The longest result a notice carries; the rest is in `corral view`.
pub const RESULT_MAX_CHARS: usize = 2000;

/// The default time between two progress digests of one child.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(30);

/// What kind of notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Completion,
    Merge,
    Progress,
}

/// The notice of a child that ended: its address, how it ended, its result
/// (cut to [`RESULT_MAX_CHARS`], with where to read the rest), what it was
/// asked to hand back, its spend, and its merge (if one is coming).
pub fn completion(child: &AgentRecord, result: Option<&str>, runtime_secs: Option<f64>) -> String {
    let mut text = format!("[corral] {} ended: {}", child.address, child.state.as_str());
    match (child.exit_code, child.signal) {
        (Some(code), _) => text.push_str(&format!(" (exit {code})")),
        (None, Some(signal)) => text.push_str(&format!(" (signal {signal})")),
        _ => {}
    }
    if let Some(reason) = &child.reason {
        text.push_str(&format!(": {reason}"));
    }
    text.push('.');
    if let Some(secs) = runtime_secs {
        text.push_str(&format!(" Ran {secs:.1}s."));
    }
    text.push_str(&spend(child));
    if let Some(result) = result.map(str::trim).filter(|r| !r.is_empty()) {
        // One line: a plain CLI reads a notice as one line of input.
        let result: String = result.lines().map(str::trim_end).collect::<Vec<_>>().join(" | ");
        let (cut, whole) = cut(&result, RESULT_MAX_CHARS);
        text.push_str(&format!(" Result: {cut}"));
        if !whole {
            text.push_str(&format!(" [cut at {RESULT_MAX_CHARS} characters: `corral view {}` has all]", child.address));
        }
    }
    if let Some(expected) = expected_output(&child.task) {
        text.push_str(&format!(" It was asked to hand back: {expected}"));
    }
    if child.state == crate::model::lifecycle::AgentState::Succeeded
        && child.merge.policy == crate::config::MergePolicy::Auto
    {
        text.push_str(" Its merge is queued; another notice says how it settles.");
    }
    text
}

/// The notice of a child whose merge settled.
pub fn merge(child: &AgentRecord) -> Option<String> {
    let state = child.merge_state.as_ref().filter(|m| m.is_settled())?;
    let target = child.merge.target.as_deref().unwrap_or("its target");
    let how = match state {
        MergeState::Merged { commit, commits } => {
            format!("merged into {target} ({commits} commits, now at {})", &commit[..commit.len().min(12)])
        }
        MergeState::Conflict { files } => {
            format!("conflicts with {target} in {}; its work stays on {}", files.join(", "), child.branch)
        }
        MergeState::GateFailed { code, .. } => format!(
            "its gate failed{}; its work stays on {}",
            code.map(|c| format!(" (exit {c})")).unwrap_or_default(),
            child.branch
        ),
        MergeState::Refused { why } => format!("was refused: {why}"),
        // Not settled yet: the notice comes when it is.
        MergeState::Waiting { .. } | MergeState::Queued | MergeState::Merging { .. } => return None,
    };
    Some(format!("[corral] {}'s merge: {how}.", child.address))
}

/// What a running child did since its last digest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub tool_calls: u64,
    /// The tools called, first seen first, at most a few.
    pub tools: Vec<String>,
    pub tokens: u64,
    pub lines: u64,
}

impl Progress {
    pub fn is_empty(&self) -> bool {
        self.tool_calls == 0 && self.tokens == 0 && self.lines == 0
    }

    pub fn tool(&mut self, name: &str) {
        self.tool_calls += 1;
        if self.tools.len() < 5 && !self.tools.iter().any(|t| t == name) {
            self.tools.push(name.to_string());
        }
    }

    /// The digest's text.
    pub fn digest(&self, child: &AgentRecord) -> String {
        let mut parts = Vec::new();
        if self.tool_calls > 0 {
            parts.push(format!("{} tool calls ({})", self.tool_calls, self.tools.join(", ")));
        }
        if self.tokens > 0 {
            parts.push(format!("{} tokens", self.tokens));
        }
        if self.lines > 0 {
            parts.push(format!("{} lines of output", self.lines));
        }
        format!("[corral] {} progress since the last digest: {}.{}", child.address, parts.join(", "), spend(child))
    }
}

fn spend(child: &AgentRecord) -> String {
    let tokens = child.usage.total();
    match (tokens, child.cost_usd) {
        (0, None) => String::new(),
        (tokens, Some(cost)) => format!(" Spent {tokens} tokens, ${cost:.4}."),
        (tokens, None) => format!(" Spent {tokens} tokens."),
    }
}

/// The `expected_output` an MCP spawn added to the task, if any.
pub fn expected_output(task: &str) -> Option<&str> {
    task.split_once("\n\nExpected output: ").map(|(_, expected)| expected.trim()).filter(|e| !e.is_empty())
}

/// `text` cut to at most `max` characters; true when it was whole.
fn cut(text: &str, max: usize) -> (&str, bool) {
    match text.char_indices().nth(max) {
        Some((at, _)) => (&text[..at], false),
        None => (text, true),
    }
}
