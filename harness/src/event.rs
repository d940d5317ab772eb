//! The one shape every harness produces: [`HarnessEvent`], [`TokenUsage`]
//! and the [`Parser`] trait (a harness's own is [`Harness::parser`]), plus
//! [`parser_for`] to pick a parser by harness name.
//!
//! Guarantees shared by every parser in this crate:
//!
//! - [`Parser::feed_line`] never panics, whatever the bytes: invalid UTF-8,
//!   binary, megabyte lines, half a JSON object, JSON of the wrong shape.
//! - Text handed to people is bounded: [`HarnessEvent::Progress`] text at
//!   [`PROGRESS_MAX_CHARS`], tool summaries at [`SUMMARY_MAX_CHARS`] on one
//!   line, [`HarnessEvent::Result`] text at [`RESULT_TEXT_MAX_CHARS`]; all cut
//!   on a `char` boundary, with `…` marking a cut.
//! - Usage only grows: every [`HarnessEvent::Usage`] carries the running
//!   total for the agent (`total`, the same figures [`Parser::totals`]
//!   returns afterwards) and the growth since the previous one (`delta`,
//!   clamped at zero per field). When a CLI's authoritative figures are lower
//!   than what was counted live, `total` follows the CLI and `delta` is zero
//!   for that field: consumers should trust `total`, not a sum of deltas.
//! - `cost_usd` on a `Usage` event is the running total cost in US dollars
//!   for the agent so far (not a delta), `None` while the CLI has never
//!   reported a cost (Codex and Gemini never do: price those by model).
//!
//! One parser serves one agent for its whole life, across the several
//! processes corral may start for it (a `codex exec resume`, a restart); the
//! per-harness modules say how they keep their totals right across those.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Harness;

/// Longest [`HarnessEvent::Progress`] text, in `char`s.
pub const PROGRESS_MAX_CHARS: usize = 2000;
/// Longest tool summary ([`HarnessEvent::ToolUse`] / [`HarnessEvent::ToolResult`]), in `char`s.
pub const SUMMARY_MAX_CHARS: usize = 200;
/// Longest [`HarnessEvent::Result`] text, in `char`s.
pub const RESULT_TEXT_MAX_CHARS: usize = 16_000;

/// Tokens, split the way providers bill them. `input` never includes cached
/// tokens: `cache_read` and `cache_write` are separate, so the four fields add
/// up to everything the model read and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Input tokens neither read from nor written to a prompt cache.
    pub input: u64,
    /// Output tokens, reasoning/thinking tokens included.
    pub output: u64,
    /// Input tokens read from a prompt cache.
    pub cache_read: u64,
    /// Input tokens written to a prompt cache.
    pub cache_write: u64,
}

impl TokenUsage {
    /// All four fields added (saturating).
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output).saturating_add(self.cache_read).saturating_add(self.cache_write)
    }

    /// Field-by-field sum, saturating at `u64::MAX`.
    pub fn saturating_add(self, other: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_add(other.input),
            output: self.output.saturating_add(other.output),
            cache_read: self.cache_read.saturating_add(other.cache_read),
            cache_write: self.cache_write.saturating_add(other.cache_write),
        }
    }

    /// Field-by-field difference, clamped at zero.
    pub fn saturating_sub(self, other: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.saturating_sub(other.input),
            output: self.output.saturating_sub(other.output),
            cache_read: self.cache_read.saturating_sub(other.cache_read),
            cache_write: self.cache_write.saturating_sub(other.cache_write),
        }
    }

    /// Field-by-field maximum.
    pub fn max(self, other: TokenUsage) -> TokenUsage {
        TokenUsage {
            input: self.input.max(other.input),
            output: self.output.max(other.output),
            cache_read: self.cache_read.max(other.cache_read),
            cache_write: self.cache_write.max(other.cache_write),
        }
    }

    /// True when every field of `self` is at least the same field of `other`.
    pub fn covers(&self, other: &TokenUsage) -> bool {
        self.input >= other.input
            && self.output >= other.output
            && self.cache_read >= other.cache_read
            && self.cache_write >= other.cache_write
    }

    /// True when every field is zero.
    pub fn is_zero(&self) -> bool {
        *self == TokenUsage::default()
    }
}

/// What a harness parser reports, one value per thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HarnessEvent {
    /// The CLI said which session (thread) it runs and, when it says, which model.
    SessionStarted { session_id: Option<String>, model: Option<String> },
    /// Assistant text or reasoning for a person to read (at most [`PROGRESS_MAX_CHARS`]).
    Progress { text: String },
    /// The agent started a tool; `summary` is one line (file path, command...).
    ToolUse { id: Option<String>, name: String, summary: String },
    /// A tool finished; `summary` is one line of its output or error.
    ToolResult { id: Option<String>, is_error: bool, summary: String },
    /// Token usage grew (or was settled). `total` is the agent's running
    /// total so far, `delta` the growth since the previous `Usage` (clamped at
    /// zero per field), `cost_usd` the running total cost when the CLI reports
    /// one, `settled` true when `total` now rests on the CLI's final figures
    /// rather than on live estimates.
    Usage { delta: TokenUsage, total: TokenUsage, cost_usd: Option<f64>, settled: bool },
    /// A turn (or run) ended. `reason` is a short machine-readable word when
    /// it failed (for example Claude Code's `error_max_turns`).
    Result { success: bool, reason: Option<String>, text: Option<String>, session_id: Option<String> },
}

/// Usage so far for one agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub tokens: TokenUsage,
    /// Running total cost in US dollars, `None` when the CLI never reported one.
    pub cost_usd: Option<f64>,
}

/// Turns one agent CLI's output, line by line, into [`HarnessEvent`]s.
pub trait Parser: Send {
    /// One line of the agent's output, without its trailing newline (and
    /// without a trailing `\r`). May be invalid UTF-8, binary, or megabytes
    /// long; must never panic.
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent>;
    /// Usage so far (settled totals where the CLI gave them).
    fn totals(&self) -> UsageTotals;

    /// One line of the CLI's own session log, the file
    /// [`Harness::usage_log`] names: for a CLI whose output reports usage
    /// only at the end (Gemini CLI), the live figures come from there, as
    /// unsettled [`HarnessEvent::Usage`]. The same rules as
    /// [`Parser::feed_line`]; reading a line twice (the log read again from
    /// its start) counts nothing twice. Nothing for the other CLIs.
    fn feed_usage_log_line(&mut self, _line: &[u8]) -> Vec<HarnessEvent> {
        Vec::new()
    }
}

/// The parser for a harness name: `claude`, `codex`, `gemini`, `opencode`,
/// `aider` or `generic` (exact, lower case; see [`Harness::parser`], and
/// [`crate::generic::GenericParser`] for `generic`); `None` for any other
/// name.
///
/// Unlike [`Harness::parser`], this gives `generic`'s line parser too:
/// for the tests and benches that feed every parser the same lines.
pub fn parser_for(harness: &str) -> Option<Box<dyn Parser>> {
    match harness.parse::<Harness>().ok()? {
        Harness::Generic => Some(Box::new(crate::generic::GenericParser::new())),
        harness => harness.parser(),
    }
}

// ---------------------------------------------------------------------------
// Helpers shared by the parsers (crate-private).
// ---------------------------------------------------------------------------

/// `s` cut to at most `max` chars on a char boundary; a cut ends in `…`
/// (which counts towards `max`).
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    // Fast path: a string of at most `max` bytes has at most `max` chars.
    if s.len() <= max {
        return s.to_owned();
    }
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let cut = s.char_indices().nth(max - 1).map_or(s.len(), |(i, _)| i);
            let mut out = String::with_capacity(cut + 3);
            out.push_str(&s[..cut]);
            out.push('…');
            out
        }
    }
}

/// `s` on one line (control characters and runs of white space become one
/// space), trimmed and cut to `max` chars.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = 0usize;
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            chars += 1;
            pending_space = false;
        }
        out.push(c);
        chars += 1;
        if chars > max {
            break;
        }
    }
    truncate_chars(&out, max)
}

/// Progress text: trimmed, bounded; `None` when nothing is left.
pub(crate) fn progress(text: &str) -> Option<HarnessEvent> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(HarnessEvent::Progress { text: truncate_chars(text, PROGRESS_MAX_CHARS) })
}

/// Result text: trimmed, bounded; `None` when empty.
pub(crate) fn result_text(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        None
    } else {
        Some(truncate_chars(text, RESULT_TEXT_MAX_CHARS))
    }
}

/// One-line summary of a tool's input: the field a person would look for
/// first (command, path, pattern, URL, query...), else the compact JSON.
pub(crate) fn summarize_input(input: &serde_json::Value) -> String {
    const KEYS: [&str; 14] = [
        "command",
        "cmd",
        "file_path",
        "filePath",
        "path",
        "notebook_path",
        "pattern",
        "url",
        "query",
        "description",
        "prompt",
        "subject",
        "name",
        "skill",
    ];
    match input {
        serde_json::Value::String(s) => one_line(s, SUMMARY_MAX_CHARS),
        serde_json::Value::Object(map) => {
            for key in KEYS {
                match map.get(key) {
                    Some(serde_json::Value::String(s)) if !s.trim().is_empty() => {
                        return one_line(s, SUMMARY_MAX_CHARS)
                    }
                    Some(serde_json::Value::Array(parts)) if key == "command" || key == "cmd" => {
                        let words: Vec<&str> = parts.iter().filter_map(|p| p.as_str()).collect();
                        if !words.is_empty() {
                            return one_line(&words.join(" "), SUMMARY_MAX_CHARS);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(serde_json::Value::Array(todos)) = map.get("todos") {
                return format!("{} todos", todos.len());
            }
            if map.is_empty() {
                return String::new();
            }
            one_line(&input.to_string(), SUMMARY_MAX_CHARS)
        }
        serde_json::Value::Null => String::new(),
        other => one_line(&other.to_string(), SUMMARY_MAX_CHARS),
    }
}

/// One-line summary of a tool's output: strings as they are, arrays of
/// content blocks by their text (`[image]` for an image), anything else as
/// compact JSON.
pub(crate) fn summarize_output(output: &serde_json::Value) -> String {
    match output {
        serde_json::Value::String(s) => one_line(s, SUMMARY_MAX_CHARS),
        serde_json::Value::Array(blocks) => {
            let mut text = String::new();
            for block in blocks {
                let part = match block {
                    serde_json::Value::String(s) => s.as_str(),
                    serde_json::Value::Object(map) => match map.get("text") {
                        Some(serde_json::Value::String(s)) => s.as_str(),
                        _ => match map.get("type").and_then(|t| t.as_str()) {
                            Some("image") => "[image]",
                            _ => "",
                        },
                    },
                    _ => "",
                };
                if part.is_empty() {
                    continue;
                }
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(part);
                if text.len() > SUMMARY_MAX_CHARS * 4 {
                    break;
                }
            }
            one_line(&text, SUMMARY_MAX_CHARS)
        }
        serde_json::Value::Null => String::new(),
        other => one_line(&other.to_string(), SUMMARY_MAX_CHARS),
    }
}

/// The JSON object on a structured (JSON-lines) line, deserialized into
/// `T`, or the events for a line that is not one: see [`non_json_line`].
pub(crate) fn parse_object<T: serde::de::DeserializeOwned>(line: &[u8]) -> Result<T, Vec<HarnessEvent>> {
    let trimmed = trim_ascii(line);
    if trimmed.first() != Some(&b'{') {
        return Err(non_json_line(trimmed));
    }
    serde_json::from_slice(trimmed).map_err(|_| Vec::new())
}

/// How the structured (JSON-lines) parsers treat a line that is not a JSON
/// object they can read: a line that starts with `{` but does not parse
/// (torn, half written, not UTF-8 inside) is dropped, and so is a line of
/// valid JSON that is not an object (an array, a number): neither is text
/// meant for a person. Any other line is text the CLI printed for a person
/// (a warning, a crash message) and becomes Progress, cleaned like the
/// generic harness does.
pub(crate) fn non_json_line(line: &[u8]) -> Vec<HarnessEvent> {
    let trimmed = trim_ascii(line);
    if trimmed.first() == Some(&b'{') || serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok() {
        return Vec::new();
    }
    crate::generic::clean_line(trimmed).and_then(|t| progress(&t)).into_iter().collect()
}

/// A JSON number as a token count: negative or non-numeric → 0, fractions cut.
pub(crate) fn json_count(v: Option<&serde_json::Value>) -> u64 {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().or_else(|| n.as_f64().filter(|f| *f > 0.0).map(|f| f as u64)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// `line` without leading and trailing ASCII white space (and a UTF-8 BOM).
pub(crate) fn trim_ascii(line: &[u8]) -> &[u8] {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    line.trim_ascii()
}

/// The running usage of one agent and the [`HarnessEvent::Usage`] events
/// that report it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Ledger {
    total: TokenUsage,
    cost_usd: Option<f64>,
}

impl Ledger {
    pub(crate) fn totals(&self) -> UsageTotals {
        UsageTotals { tokens: self.total, cost_usd: self.cost_usd }
    }

    pub(crate) fn total(&self) -> TokenUsage {
        self.total
    }

    /// Adds `delta` tokens and `cost_delta` dollars; `None` when nothing changed.
    pub(crate) fn add(&mut self, delta: TokenUsage, cost_delta: Option<f64>, settled: bool) -> Option<HarnessEvent> {
        let new_total = self.total.saturating_add(delta);
        let new_cost = match (self.cost_usd, cost_delta) {
            (Some(c), Some(d)) => Some(c + d),
            (None, Some(d)) => Some(d),
            (c, None) => c,
        };
        self.set(new_total, new_cost, settled, false)
    }

    /// Sets the running total to `total` (and the cost to `cost_usd` when
    /// given). Emits an event when something changed, or always when `force`.
    pub(crate) fn set(
        &mut self,
        total: TokenUsage,
        cost_usd: Option<f64>,
        settled: bool,
        force: bool,
    ) -> Option<HarnessEvent> {
        // A sum past f64's range stops at its largest (infinity would be
        // written as `null`, read back as no cost at all).
        let cost_usd = cost_usd.map(|c| if c.is_nan() || c == f64::INFINITY { f64::MAX } else { c.max(0.0) });
        let cost_usd = cost_usd.or(self.cost_usd);
        let delta = total.saturating_sub(self.total);
        let changed = total != self.total || cost_usd != self.cost_usd;
        self.total = total;
        self.cost_usd = cost_usd;
        (changed || force).then_some(HarnessEvent::Usage { delta, total, cost_usd, settled })
    }
}

/// Turns cumulative usage snapshots (figures a CLI restates as running
/// totals, per session or per process) into the growth not yet counted.
///
/// Snapshots are kept per *scope* (a session or thread id). Within a scope,
/// a snapshot that covers the previous one in every field is the same
/// counter grown, and only the difference counts; a snapshot lower in any
/// field means the counter started again (a new process that did not carry
/// the old figures over), and counts in full. A new scope counts in full.
#[derive(Debug, Default, Clone)]
pub(crate) struct Cumulative {
    scopes: HashMap<String, Snapshot>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Snapshot {
    tokens: Option<TokenUsage>,
    cost: Option<f64>,
}

/// Scopes kept at most; an agent has a handful in practice.
const MAX_SCOPES: usize = 1024;
/// Cost differences below this are rounding, not a restart.
const COST_EPSILON: f64 = 1e-9;

impl Cumulative {
    /// The part of (`tokens`, `cost`) not counted before in `scope`.
    pub(crate) fn advance(
        &mut self,
        scope: &str,
        tokens: Option<TokenUsage>,
        cost: Option<f64>,
    ) -> (TokenUsage, Option<f64>) {
        let cost = cost.filter(|c| c.is_finite() && *c >= 0.0);
        let prev = self.scopes.get(scope).copied().unwrap_or_default();
        let tokens_restarted = matches!((tokens, prev.tokens), (Some(t), Some(p)) if !t.covers(&p));
        let cost_restarted = matches!((cost, prev.cost), (Some(c), Some(p)) if c + COST_EPSILON < p);
        let restarted = tokens_restarted || cost_restarted;
        let base = if restarted { Snapshot::default() } else { prev };
        let token_delta = match (tokens, base.tokens) {
            (Some(t), Some(p)) => t.saturating_sub(p),
            (Some(t), None) => t,
            (None, _) => TokenUsage::default(),
        };
        let cost_delta = match (cost, base.cost) {
            (Some(c), Some(p)) => Some((c - p).max(0.0)),
            (Some(c), None) => Some(c),
            (None, _) => None,
        };
        if self.scopes.len() >= MAX_SCOPES && !self.scopes.contains_key(scope) {
            self.scopes.clear();
        }
        self.scopes.insert(scope.to_owned(), Snapshot { tokens: tokens.or(base.tokens), cost: cost.or(base.cost) });
        (token_delta, cost_delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(input: u64, output: u64, cache_read: u64, cache_write: u64) -> TokenUsage {
        TokenUsage { input, output, cache_read, cache_write }
    }

    #[test]
    fn a_cost_past_f64s_range_stops_at_its_largest() {
        let mut ledger = Ledger::default();
        let usage = TokenUsage { input: 1, ..Default::default() };
        ledger.set(usage, Some(1e308 + 1e308), true, true);
        assert_eq!(ledger.totals().cost_usd, Some(f64::MAX));
    }

    #[test]
    fn token_usage_arithmetic_saturates() {
        let a = t(1, 2, 3, 4);
        assert_eq!(a.total(), 10);
        assert_eq!(a.saturating_add(t(1, 1, 1, 1)), t(2, 3, 4, 5));
        assert_eq!(a.saturating_sub(t(2, 1, 5, 4)), t(0, 1, 0, 0));
        assert_eq!(t(u64::MAX, 1, 0, 0).total(), u64::MAX);
        assert_eq!(t(u64::MAX, 0, 0, 0).saturating_add(t(1, 0, 0, 0)), t(u64::MAX, 0, 0, 0));
        assert!(a.covers(&t(1, 2, 3, 4)));
        assert!(!a.covers(&t(0, 3, 0, 0)));
        assert!(TokenUsage::default().is_zero());
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_chars("héllo", 3), "hé…");
        assert_eq!(truncate_chars("ééééé", 5), "ééééé");
        assert_eq!(truncate_chars("éééééé", 5), "éééé…");
        assert_eq!(truncate_chars("abc", 0), "");
        let long = "€".repeat(5000);
        let cut = truncate_chars(&long, PROGRESS_MAX_CHARS);
        assert_eq!(cut.chars().count(), PROGRESS_MAX_CHARS);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn one_line_collapses_white_space_and_controls() {
        assert_eq!(one_line("  a\n\tb\r\n  c  ", 200), "a b c");
        assert_eq!(one_line("\u{7}x", 200), "x");
        assert_eq!(one_line(&"x".repeat(500), 10).chars().count(), 10);
    }

    #[test]
    fn input_summary_prefers_known_keys() {
        let v: serde_json::Value = serde_json::from_str(r#"{"old_string":"x","file_path":"/a/b.rs"}"#).unwrap();
        assert_eq!(summarize_input(&v), "/a/b.rs");
        let v: serde_json::Value = serde_json::from_str(r#"{"command":["bash","-lc","ls"]}"#).unwrap();
        assert_eq!(summarize_input(&v), "bash -lc ls");
        let v: serde_json::Value = serde_json::from_str(r#"{"todos":[1,2,3]}"#).unwrap();
        assert_eq!(summarize_input(&v), "3 todos");
        let v: serde_json::Value = serde_json::from_str(r#"{"a":1}"#).unwrap();
        assert_eq!(summarize_input(&v), r#"{"a":1}"#);
    }

    #[test]
    fn cumulative_counts_growth_within_a_scope_and_restarts_in_full() {
        let mut c = Cumulative::default();
        assert_eq!(c.advance("s", Some(t(10, 1, 0, 0)), Some(0.5)), (t(10, 1, 0, 0), Some(0.5)));
        // Grown: only the difference (15-10, 3-1; 0.75-0.5).
        assert_eq!(c.advance("s", Some(t(15, 3, 0, 0)), Some(0.75)), (t(5, 2, 0, 0), Some(0.25)));
        // Lower output: a new counter, counted in full.
        assert_eq!(c.advance("s", Some(t(20, 1, 0, 0)), Some(0.8)), (t(20, 1, 0, 0), Some(0.8)));
        // Another scope starts from zero.
        assert_eq!(c.advance("other", Some(t(1, 1, 1, 1)), None), (t(1, 1, 1, 1), None));
        // Cost alone going down is a restart too.
        assert_eq!(c.advance("s", Some(t(20, 1, 0, 0)), Some(0.1)), (t(20, 1, 0, 0), Some(0.1)));
    }

    #[test]
    fn ledger_reports_changes_only() {
        let mut l = Ledger::default();
        assert!(l.add(TokenUsage::default(), None, false).is_none());
        let e = l.add(t(1, 0, 0, 0), Some(0.5), false).unwrap();
        assert_eq!(
            e,
            HarnessEvent::Usage { delta: t(1, 0, 0, 0), total: t(1, 0, 0, 0), cost_usd: Some(0.5), settled: false }
        );
        // Settling lower than counted: total follows, delta clamps at zero.
        let e = l.set(t(0, 2, 0, 0), None, true, true).unwrap();
        assert_eq!(
            e,
            HarnessEvent::Usage { delta: t(0, 2, 0, 0), total: t(0, 2, 0, 0), cost_usd: Some(0.5), settled: true }
        );
        assert_eq!(l.totals().tokens, t(0, 2, 0, 0));
    }

    #[test]
    fn parser_for_knows_every_harness() {
        for name in ["claude", "codex", "gemini", "opencode", "aider", "generic"] {
            assert!(parser_for(name).is_some(), "{name}");
        }
        assert!(parser_for("Claude").is_none());
        assert!(parser_for("").is_none());
    }

    #[test]
    fn events_serialize_with_a_kind_tag() {
        let e = HarnessEvent::Progress { text: "hi".into() };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"progress","text":"hi"}"#);
        let back: HarnessEvent =
            serde_json::from_str(r#"{"kind":"tool_use","id":null,"name":"Bash","summary":"ls"}"#).unwrap();
        assert_eq!(back, HarnessEvent::ToolUse { id: None, name: "Bash".into(), summary: "ls".into() });
    }
}
