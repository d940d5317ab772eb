//! Aider, all of it: how corral starts it and how its output reads.
//!
//! - Launch: `aider --yes-always --no-pretty --no-fancy-input --no-stream
//!   --no-auto-commits --no-dirty-commits --no-gitignore --no-check-update
//!   --no-analytics --no-show-release-notes --no-show-model-warnings
//!   [--model M] EXTRA`, its stdin a pipe, in a PTY that is not raw (its
//!   output is text for a terminal). Why each:
//!   - `--no-fancy-input`: with its input a pipe, Aider's terminal input
//!     (prompt_toolkit) warns "Input is not a terminal" and exits without a
//!     call; plain input reads one line a turn.
//!   - `--no-stream`: streamed, Aider ignores the server's usage and prints
//!     its own estimate; not streamed, it prints the server's figures.
//!   - `--no-auto-commits --no-dirty-commits`: Aider writes each commit
//!     message with a model call whose usage it never prints, so no meter
//!     reading its output could count it; the agent's edits stay in its
//!     worktree, uncommitted, as Claude Code's and Codex's do. Give
//!     `--auto-commits` after `--` to have Aider commit (and those calls go
//!     uncounted unless a metering proxy sees them).
//!   - `--no-gitignore`: else it adds `.aider*` to the worktree's
//!     `.gitignore` (it asks, and `--yes-always` says yes).
//!   - `--no-check-update --no-analytics --no-show-release-notes
//!     --no-show-model-warnings`: no network but the model's, no analytics
//!     opt-in said yes to by `--yes-always`, no browser opened.
//!
//!   The model server comes from the environment (`OPENAI_API_BASE`,
//!   `OPENAI_API_KEY` with `--model openai/NAME`, or Aider's own `AIDER_*`
//!   variables), passed through from the spawning one.
//! - Delivery: on stdin, one input a turn, the task first
//!   ([`message_input`]): a one-line text as it is, a longer one in Aider's
//!   `{corral` ... `corral}` block. Aider reads the next input once a turn
//!   is over, so messages wait in the pipe, in order. A text starting with
//!   `/` is an Aider command (`/add FILE`, `/exit`). Aider exits when its
//!   input closes, which corral does once every delivered message has been
//!   answered. A new task for an ended agent is a new process with that
//!   task as its first input.
//! - Output: see below; [`AiderParser`] keeps the agent's token usage and
//!   cost, and reports each answered model call as a `Result`.
//!
//! Aider has no structured output: its plain text is read line by
//! line, cleaned like the generic harness ([`crate::generic::clean_line`]:
//! terminal escapes stripped, lossy UTF-8), and its usage report is parsed
//! into [`HarnessEvent::Usage`]. Every other line with text on it becomes
//! `Progress`; empty lines are skipped. Aider prints no session id, so this parser
//! never reports `SessionStarted`. It prints no end-of-turn marker either
//! (its `> ` prompt comes without a line end), so each usage report, the
//! end of one answered model call, is a successful `Result` (its text: the
//! lines printed since the last one), and an error line of litellm's
//! (`litellm.BadRequestError: ...`, after which Aider waits for input) is
//! a failed one (reason `api_error`). A turn Aider retries or reflects on
//! (an edit that failed to apply) has more than one; its input may then
//! close early, which loses nothing: what was delivered is in the pipe, and
//! Aider answers all of it before it reads the end.
//!
//! ## The usage report
//!
//! After each model call Aider prints (aider `base_coder.py`,
//! `calculate_and_show_tokens_and_cost`):
//!
//! ```text
//! Tokens: 2.3k sent, 440 received. Cost: $0.00061 message, $0.00061 session.
//! Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440 received.
//! Cost: $0.05 message, $0.12 session.
//! ```
//!
//! The `cache write` and `cache hit` parts appear only when non-zero; the
//! cost part is missing when the model has no known price, and goes to a
//! line of its own when both cache parts are present. Figures are rounded by
//! Aider's `format_tokens`: below 1000 exact, below 10 000 one decimal with
//! `k` (`2.3k`), above that whole thousands (`12k`); an `M` suffix is read
//! too. Figures below 1000 are exact. A rounded one is counted as the
//! largest figure that rounds to it (`2.3k` as 2350, `12k` as 12 500), so
//! the meter never counts less than was used, and at most one printed unit
//! more per figure (100 tokens for `2.3k`, 1000 for `12k`: Python rounds
//! halves to even). Exact figures
//! for every call are what a metering proxy between Aider and the model
//! sees.
//!
//! Mapping: Aider's "sent" is every input token of the call (it adds the
//! cache-write tokens into it itself; for DeepSeek- and OpenAI-style
//! providers the prompt count already holds the cache hits), so `input =
//! sent - cache write - cache hit` (clamped at zero), `cache_write = cache
//! write`, `cache_read = cache hit`, `output = received`. Token figures are
//! per message and are added up. The cost counted is the **session** figure,
//! a running total for the Aider process: only its growth is added. A new
//! Aider process for the same agent starts its session figure at zero again:
//! its start banner (`Aider v0.86.1`) starts a new count, and a session
//! figure lower than the last one counts in full even without a banner. A
//! report with only a message cost adds that.

use crate::event::{
    progress, result_text, Cumulative, HarnessEvent, Ledger, Parser, TokenUsage, UsageTotals, RESULT_TEXT_MAX_CHARS,
};
use crate::generic::clean_line;
use crate::launch::{push, Delivery, Input, Launch, Options};

// ---------------------------------------------------------------------------
// Launch and delivery.
// ---------------------------------------------------------------------------

/// The environment variable that names the `aider` binary.
pub(crate) const PROGRAM_VARIABLE: &str = "CORRAL_AIDER_BIN";

/// Each answered model call is a result (see the module doc).
pub(crate) const REPORTS_RESULTS: bool = true;

/// Messages go to stdin, one input a turn.
pub(crate) const DELIVERY: Delivery = Delivery::Stdin;

/// The tag of the multi-line input block ([`message_input`]).
const BLOCK_TAG: &str = "corral";

/// The launch of `program` for `task`; `extra` goes after corral's own
/// arguments; the task is the first input.
pub(crate) fn launch(program: &str, task: &str, options: &Options, extra: &[String]) -> Launch {
    let mut argv = vec![program.to_string()];
    push(&mut argv, &["--yes-always", "--no-pretty", "--no-fancy-input", "--no-stream"]);
    push(&mut argv, &["--no-auto-commits", "--no-dirty-commits", "--no-gitignore", "--no-check-update"]);
    push(&mut argv, &["--no-analytics", "--no-show-release-notes", "--no-show-model-warnings"]);
    if let Some(model) = options.model {
        push(&mut argv, &["--model", model]);
    }
    argv.extend_from_slice(extra);
    Launch { argv, raw_pty: false, input: Input::Pipe, first_input: Some(message_input(task)) }
}

/// What is written to Aider's input to deliver `text` as one turn: the line
/// itself, or, when it has line breaks, Aider's tagged block (`{corral`,
/// the lines, `corral}`), which plain input reads whole. Carriage returns
/// become line breaks; a line of the text that is exactly `corral}` would
/// end the block early, so it gets a trailing space.
pub(crate) fn message_input(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let text = text.trim_end_matches('\n');
    if !text.contains('\n') {
        return format!("{text}\n");
    }
    let end = format!("{BLOCK_TAG}}}");
    let mut block = format!("{{{BLOCK_TAG}\n");
    for line in text.lines() {
        block.push_str(line);
        if line == end {
            block.push(' ');
        }
        block.push('\n');
    }
    block.push_str(&end);
    block.push('\n');
    block
}

/// An ended agent's next run with `task`: the same command, a new Aider
/// process, the task its first input.
pub(crate) fn next_task(launch_argv: &[String], task: &str) -> (Vec<String>, Option<String>) {
    (launch_argv.to_vec(), Some(message_input(task)))
}

/// Parser for Aider's plain-text output. One per agent.
#[derive(Debug, Default)]
pub struct AiderParser {
    ledger: Ledger,
    session_cost: Cumulative,
    /// Aider processes seen (start banners), the scope of the session cost.
    process: u64,
    /// The lines printed since the last result, bounded: the next one's text.
    reply: String,
    /// A report the console wrapped at the PTY's width, waiting for the
    /// rest of it on the next lines.
    held: Option<Held>,
}

/// The start of a wrapped `Tokens:` or `Cost:` report. Aider's console
/// wraps at the terminal's width, and the PTY is as narrow as the last
/// terminal that attached to it: `... 3.4k cache hit, 440` then
/// `received.`, or `... Cost: $0.04 message, $1.23` then `session.`.
#[derive(Debug)]
struct Held {
    text: String,
    /// Whether its tokens were counted already (only its cost was cut).
    tokens_counted: bool,
    /// The lines it was read from so far.
    lines: usize,
}

/// The most lines a wrapped report is read from: on a 40-column PTY, the
/// longest (with cache write, cache hit and cost) takes three.
const MAX_REPORT_LINES: usize = 4;

/// What a report line says.
enum Report {
    /// Whole: its tokens, its cost, or both.
    Whole(Option<TokenReport>, Option<CostReport>),
    /// Its tokens, and a cost part that cannot be read (cut by a wrap).
    TokensOnly(TokenReport),
    /// Nothing that can be read (cut by a wrap, or not a report).
    Unread,
}

/// The report that starts `text` at `Tokens:` or `Cost:`, if one does,
/// after nothing but what a spinner or a prompt leaves on the line (no
/// letter or digit before it): `░█  Tokens: 600 sent, 40 received.`
fn report_in(text: &str) -> Option<&str> {
    let at = ["Tokens:", "Cost:"].iter().find_map(|marker| text.find(marker))?;
    (!text[..at].chars().any(char::is_alphanumeric)).then(|| &text[at..])
}

fn read_report(report: &str) -> Report {
    if let Some(rest) = report.strip_prefix("Tokens:") {
        let (tokens_part, cost_part) = match rest.split_once("Cost:") {
            Some((t, c)) => (t, Some(c)),
            None => (rest, None),
        };
        let Some(tokens) = parse_tokens(tokens_part) else { return Report::Unread };
        return match cost_part.map(parse_cost) {
            None => Report::Whole(Some(tokens), None),
            Some(Some(cost)) => Report::Whole(Some(tokens), Some(cost)),
            Some(None) => Report::TokensOnly(tokens),
        };
    }
    match report.strip_prefix("Cost:").and_then(parse_cost) {
        Some(cost) => Report::Whole(None, Some(cost)),
        None => Report::Unread,
    }
}

/// Token figures of one `Tokens:` report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TokenReport {
    sent: Count,
    cache_write: Count,
    cache_hit: Count,
    received: Count,
}

/// Cost figures of one `Cost:` report, in US dollars.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct CostReport {
    message: Option<f64>,
    session: Option<f64>,
}

/// A printed token figure: the range of counts that print as it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Count {
    /// The fewest tokens it can stand for.
    low: u64,
    /// The most tokens it can stand for.
    high: u64,
}

/// "440" → exactly 440; "2.3k" → 2250..=2350, "12k" → 11 500..=12 500,
/// "1.5M" → 1 450 000..=1 550 000: a rounded figure stands for half its
/// last digit's unit either side (both ends, as Python rounds halves to
/// even).
fn parse_count(s: &str) -> Option<Count> {
    let s = s.trim();
    let (number, scale) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (s[..i].trim(), 1_000u64),
        (i, 'm' | 'M') => (s[..i].trim(), 1_000_000),
        _ => (s, 1),
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    let printed = (value * scale as f64).round() as u64;
    if scale == 1 {
        return Some(Count { low: printed, high: printed });
    }
    let decimals = number.split_once('.').map_or(0, |(_, fraction)| fraction.len()) as u32;
    let half = scale / 10u64.saturating_pow(decimals).max(1) / 2;
    Some(Count { low: printed.saturating_sub(half), high: printed + half })
}

/// The `Tokens: ...` part of a line (up to `Cost:` or the end).
fn parse_tokens(text: &str) -> Option<TokenReport> {
    let mut report = TokenReport::default();
    let mut saw_sent = false;
    let mut saw_received = false;
    for item in text.split(',') {
        let item = item.trim().trim_end_matches('.').trim();
        let (number, label) = item.split_once(' ')?;
        let value = parse_count(number)?;
        match label.trim() {
            "sent" => {
                report.sent = value;
                saw_sent = true;
            }
            "cache write" => report.cache_write = value,
            "cache hit" => report.cache_hit = value,
            "received" => {
                report.received = value;
                saw_received = true;
            }
            _ => return None,
        }
    }
    (saw_sent && saw_received).then_some(report)
}

/// The `$a message, $b session.` part of a `Cost:` report.
fn parse_cost(text: &str) -> Option<CostReport> {
    let mut report = CostReport::default();
    for item in text.split(',') {
        let item = item.trim().trim_end_matches('.').trim();
        let (number, label) = item.split_once(' ')?;
        let value: f64 = number.trim().strip_prefix('$')?.parse().ok()?;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        match label.trim() {
            "message" => report.message = Some(value),
            "session" => report.session = Some(value),
            _ => return None,
        }
    }
    (report.message.is_some() || report.session.is_some()).then_some(report)
}

/// Aider's start banner, `Aider v0.86.1`.
fn is_banner(text: &str) -> bool {
    text.strip_prefix("Aider v").is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

impl AiderParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Usage event for a report with `tokens` and/or `cost`.
    fn report(&mut self, tokens: Option<TokenReport>, cost: Option<CostReport>) -> Option<HarnessEvent> {
        // Every field at the top of its range, and the input worked out
        // from the most that was sent less the least that went to the
        // cache: no field is ever counted lower than it was.
        let delta = tokens.map_or(TokenUsage::default(), |r| TokenUsage {
            input: r.sent.high.saturating_sub(r.cache_write.low).saturating_sub(r.cache_hit.low),
            output: r.received.high,
            cache_read: r.cache_hit.high,
            cache_write: r.cache_write.high,
        });
        let cost_delta = match cost {
            Some(CostReport { session: Some(session), .. }) => {
                self.session_cost.advance(&self.process.to_string(), None, Some(session)).1
            }
            Some(CostReport { message: Some(message), session: None }) => Some(message),
            _ => None,
        };
        let total = self.ledger.total().saturating_add(delta);
        let cost_total = cost_delta.map(|d| self.ledger.totals().cost_usd.unwrap_or(0.0) + d);
        self.ledger.set(total, cost_total, true, true)
    }
}

/// An error line of litellm's, after which Aider gives up the call or
/// retries it: `litellm.BadRequestError: OpenAIException - ...`.
fn is_api_error(text: &str) -> bool {
    text.strip_prefix("litellm.").is_some_and(|rest| rest.split(':').next().is_some_and(|name| name.ends_with("Error")))
}

impl AiderParser {
    /// The result of an answered call (or a failed one), with the lines
    /// printed since the last result as its text.
    fn result(&mut self, success: bool, failure: Option<&str>) -> HarnessEvent {
        let text = result_text(self.reply.trim());
        self.reply.clear();
        HarnessEvent::Result { success, reason: failure.map(str::to_owned), text, session_id: None }
    }
}

impl AiderParser {
    /// The events of a report: its usage, and for tokens the result of the
    /// call they close.
    fn reported(&mut self, tokens: Option<TokenReport>, cost: Option<CostReport>) -> Vec<HarnessEvent> {
        let mut events: Vec<HarnessEvent> = self.report(tokens, cost).into_iter().collect();
        if tokens.is_some() {
            events.push(self.result(true, None));
        }
        events
    }

    /// The rest of a held report, if `text` completes it.
    fn complete_held(&mut self, text: &str) -> Option<Vec<HarnessEvent>> {
        let mut held = self.held.take()?;
        held.text = format!("{} {}", held.text.trim_end(), text.trim());
        held.lines += 1;
        let counted = held.tokens_counted;
        match read_report(&held.text) {
            Report::Whole(tokens, cost) => Some(self.reported(tokens.filter(|_| !counted), cost)),
            Report::TokensOnly(tokens) if !counted => {
                let events = self.reported(Some(tokens), None);
                held.tokens_counted = true;
                self.held = (held.lines < MAX_REPORT_LINES).then_some(held);
                Some(events)
            }
            // Still cut: read on, within bounds; the line is also read as
            // itself (it may be no part of the report at all).
            _ => {
                self.held = (held.lines < MAX_REPORT_LINES).then_some(held);
                None
            }
        }
    }
}

impl Parser for AiderParser {
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        let Some(text) = clean_line(line) else {
            return Vec::new();
        };
        if let Some(events) = self.complete_held(&text) {
            return events;
        }
        if let Some(report) = report_in(&text) {
            let report = report.to_owned();
            match read_report(&report) {
                Report::Whole(tokens, cost) => {
                    self.held = None;
                    return self.reported(tokens, cost);
                }
                Report::TokensOnly(tokens) => {
                    // Its tokens now (nothing of them waits on a wrap), its
                    // cost once the rest of the line comes.
                    self.held = Some(Held { text: report, tokens_counted: true, lines: 1 });
                    return self.reported(Some(tokens), None);
                }
                Report::Unread => self.held = Some(Held { text: report, tokens_counted: false, lines: 1 }),
            }
        } else if is_banner(&text) {
            self.process += 1;
        }
        let mut events: Vec<HarnessEvent> = progress(&text).into_iter().collect();
        if is_api_error(&text) {
            self.reply = text.clone();
            events.push(self.result(false, Some("api_error")));
        } else if self.reply.len() < RESULT_TEXT_MAX_CHARS * 4 && !text.trim().is_empty() && text.trim() != ">" {
            self.reply.push_str(text.trim_start_matches("> "));
            self.reply.push('\n');
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

    #[test]
    fn a_message_is_one_input_a_line_or_a_tagged_block() {
        assert_eq!(message_input("say hi"), "say hi\n");
        assert_eq!(message_input("say hi\n"), "say hi\n");
        assert_eq!(message_input("one\r\ntwo\nthree"), "{corral\none\ntwo\nthree\ncorral}\n");
        // A line that would end the block early is kept inside it.
        assert_eq!(message_input("a\ncorral}\nb"), "{corral\na\ncorral} \nb\ncorral}\n");
    }

    /// The last usage event's totals (tokens, cost), and how many results.
    fn fed(lines: &[&str]) -> (TokenUsage, Option<f64>, usize) {
        let mut p = AiderParser::new();
        let mut results = 0;
        for line in lines {
            results += p.feed_line(line.as_bytes()).iter().filter(|e| matches!(e, HarnessEvent::Result { .. })).count();
        }
        let totals = p.totals();
        (totals.tokens, totals.cost_usd, results)
    }

    #[test]
    fn a_report_the_console_wrapped_at_a_narrow_pty_is_read_whole() {
        // Regression: a report wrapped onto two lines lost its cost, or
        // all its tokens (`corral attach` from a narrow terminal leaves
        // the PTY that narrow).
        let whole = fed(&[
            "Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440 received. Cost: $0.04 message, $1.23 session.",
        ]);
        assert_eq!(whole.2, 1);
        for wrapped in [
            &["Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440", "received. Cost: $0.04 message, $1.23 session."][..],
            &["Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440 received. Cost: $0.04 message, $1.23", "session."],
            &["Tokens: 12k sent, 1.2k cache write,", "3.4k cache hit, 440 received. Cost:", "$0.04 message, $1.23 session."],
            &["Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440 received.", "Cost: $0.04 message, $1.23 session."],
            &["░█\u{8}\u{8}  Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440 received. Cost: $0.04 message, $1.23 session."],
        ] {
            assert_eq!(fed(wrapped), whole, "{wrapped:?}");
        }
        // A prompt's leftovers before it count; words before it do not
        // make a report (the model's own text saying "Tokens:").
        assert_eq!(fed(&["> Tokens: 600 sent, 40 received."]).0.output, 40);
        assert_eq!(fed(&["the Tokens: 600 sent, 40 received."]).0, TokenUsage::default());
        // A line that is no rest of the report is read as itself.
        let (tokens, _, results) = fed(&["Tokens: 12k sent, 440", "Tokens: 600 sent, 40 received."]);
        assert_eq!((tokens.output, results), (40, 1));
    }

    #[test]
    fn each_answered_call_is_a_result_and_an_api_error_a_failed_one() {
        let mut p = AiderParser::new();
        p.feed_line(b"Aider v0.86.2");
        p.feed_line(b"> ");
        p.feed_line(b"Hi there!");
        let events = p.feed_line(b"Tokens: 600 sent, 7 received.");
        assert_eq!(
            events.last(),
            Some(&HarnessEvent::Result {
                success: true,
                reason: None,
                text: Some("Aider v0.86.2\nHi there!".into()),
                session_id: None
            })
        );
        let events = p.feed_line(b"litellm.BadRequestError: OpenAIException - Invalid request (mock)");
        assert_eq!(
            events,
            vec![
                HarnessEvent::Progress {
                    text: "litellm.BadRequestError: OpenAIException - Invalid request (mock)".into()
                },
                HarnessEvent::Result {
                    success: false,
                    reason: Some("api_error".into()),
                    text: Some("litellm.BadRequestError: OpenAIException - Invalid request (mock)".into()),
                    session_id: None
                }
            ]
        );
        assert!(!is_api_error("litellm is a library"));
    }

    #[test]
    fn k_and_m_suffixes() {
        // Exact below 1000; a rounded figure stands for a range.
        let count = |s: &str| parse_count(s).map(|c| (c.low, c.high));
        assert_eq!(count("440"), Some((440, 440)));
        assert_eq!(count("2.3k"), Some((2250, 2350)));
        assert_eq!(count("12k"), Some((11_500, 12_500)));
        assert_eq!(count("9.9k"), Some((9850, 9950)));
        assert_eq!(count("1.5M"), Some((1_450_000, 1_550_000)));
        assert_eq!(count("0.1k"), Some((50, 150)));
        assert_eq!(count("10.0k"), Some((9950, 10_050)));
        assert_eq!(parse_count("k"), None);
        assert_eq!(parse_count("-1"), None);
        assert_eq!(parse_count("lots"), None);
    }

    #[test]
    fn report_with_cache_parts_and_cost_on_the_next_line() {
        let mut p = AiderParser::new();
        let events = p.feed_line(b"Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 440 received.");
        // Never lower than the truth: input at most 12 500 - 1150 - 3350 =
        // 8000, the cache figures at the top of their ranges.
        assert_eq!(
            events[..1],
            [HarnessEvent::Usage {
                delta: t(8000, 440, 3450, 1250),
                total: t(8000, 440, 3450, 1250),
                cost_usd: None,
                settled: true
            }]
        );
        p.feed_line(b"Cost: $0.05 message, $0.12 session.");
        assert_eq!(p.totals().cost_usd, Some(0.12));
    }

    #[test]
    fn session_cost_counts_growth_and_restarts() {
        let mut p = AiderParser::new();
        p.feed_line(b"Tokens: 1.0k sent, 10 received. Cost: $0.01 message, $0.01 session.");
        p.feed_line(b"Tokens: 2.0k sent, 20 received. Cost: $0.02 message, $0.03 session.");
        // Tokens per message add up, each at its most: 1050+2050 in, 10+20 out.
        assert_eq!(p.totals().tokens, t(3100, 30, 0, 0));
        assert!((p.totals().cost_usd.unwrap() - 0.03).abs() < 1e-12);
        // A new Aider process: session figure starts again, counted in full.
        p.feed_line(b"Tokens: 500 sent, 5 received. Cost: $0.004 message, $0.004 session.");
        assert!((p.totals().cost_usd.unwrap() - 0.034).abs() < 1e-12);
        assert_eq!(p.totals().tokens, t(3600, 35, 0, 0));
    }

    #[test]
    fn a_start_banner_starts_a_new_session_cost() {
        let mut p = AiderParser::new();
        p.feed_line(b"Tokens: 1k sent, 10 received. Cost: $0.01 message, $0.01 session.");
        // A new Aider process: its session figure 0.02 covers the old 0.01,
        // but the banner says it starts from zero: 0.01 + 0.02.
        assert_eq!(p.feed_line(b"Aider v0.86.1"), vec![HarnessEvent::Progress { text: "Aider v0.86.1".into() }]);
        p.feed_line(b"Tokens: 2k sent, 20 received. Cost: $0.02 message, $0.02 session.");
        assert!((p.totals().cost_usd.unwrap() - 0.03).abs() < 1e-12);
        assert!(!is_banner("Aider version"));
    }

    #[test]
    fn report_without_price_and_coloured_lines() {
        let mut p = AiderParser::new();
        let events = p.feed_line(b"\x1b[2mTokens: 3.1k sent, 12 received.\x1b[0m");
        assert_eq!(
            events[..1],
            [HarnessEvent::Usage { delta: t(3150, 12, 0, 0), total: t(3150, 12, 0, 0), cost_usd: None, settled: true }]
        );
        // Look-alikes that are not reports stay text.
        assert_eq!(
            p.feed_line(b"Tokens: are great"),
            vec![HarnessEvent::Progress { text: "Tokens: are great".into() }]
        );
        assert!(p.feed_line(b"").is_empty());
    }
}
