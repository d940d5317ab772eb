//! The generic harness: any command corral can run, all of it.
//!
//! - Launch: the command given, as it is, in a PTY (its stdin): no program
//!   variable, no options applied (its sandbox is not enforced).
//! - Delivery: a message is typed into the PTY, then Enter
//!   ([`crate::Harness::message_input`]). A new task for an ended agent
//!   runs the same command again.
//! - Output: corral reads no events from it ([`crate::Harness::parser`] is
//!   `None`). [`GenericParser`] makes every line with text on it a
//!   [`HarnessEvent::Progress`]; nothing else is inferred, and no usage is
//!   ever reported (its totals stay zero, cost `None`).
//!
//! Guarantees: terminal escape sequences (CSI such as colours and cursor
//! moves, OSC such as window titles and hyperlinks, DCS/APC strings, and the
//! two- and three-byte `ESC` forms) are removed; a carriage return inside a
//! line (a progress bar redrawing itself) keeps only what the terminal would
//! show last; other control characters are dropped (a tab becomes a space);
//! invalid UTF-8 is replaced with U+FFFD; the text is trimmed and cut to
//! [`crate::event::PROGRESS_MAX_CHARS`]. Lines with nothing left are
//! skipped. [`clean_line`] is the same cleaning, for the other plain-text
//! parsers (Aider) and for the non-JSON lines of the structured ones.

use crate::event::{progress, HarnessEvent, Parser, UsageTotals, PROGRESS_MAX_CHARS};
use crate::launch::{Delivery, Input, Launch};

// ---------------------------------------------------------------------------
// Launch and delivery.
// ---------------------------------------------------------------------------

/// A plain command says nothing about how its task ended but its exit.
pub(crate) const REPORTS_RESULTS: bool = false;

/// Messages are typed into the PTY.
pub(crate) const DELIVERY: Delivery = Delivery::TypeIntoPty;

/// The launch of `command`, the whole command line; refused when empty.
pub(crate) fn launch(command: &[String]) -> Result<Launch, String> {
    if command.is_empty() {
        return Err("the generic harness needs a command: `corral spawn NAME -- COMMAND [ARGS]`".into());
    }
    Ok(Launch { argv: command.to_vec(), raw_pty: false, input: Input::Pty, first_input: None })
}

/// What is typed into the PTY to deliver `text`: the text, then Enter.
pub(crate) fn message_input(text: &str) -> String {
    format!("{text}\r")
}

/// An ended agent's next run: the same command again (its task reaches it
/// through the environment).
pub(crate) fn next_task(launch_argv: &[String]) -> (Vec<String>, Option<String>) {
    (launch_argv.to_vec(), None)
}

/// Parser for any command: text lines in, Progress out.
#[derive(Debug, Default)]
pub struct GenericParser {}

impl GenericParser {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Parser for GenericParser {
    fn feed_line(&mut self, line: &[u8]) -> Vec<HarnessEvent> {
        clean_line(line).and_then(|text| progress(&text)).into_iter().collect()
    }

    fn totals(&self) -> UsageTotals {
        UsageTotals::default()
    }
}

/// Bytes of a terminal line as the text a person would read there: escape
/// sequences removed, only the last carriage-return segment kept, control
/// characters dropped, lossy UTF-8, trimmed and bounded (a little above
/// [`PROGRESS_MAX_CHARS`], so the caller's own cut still shows `…`).
/// `None` when nothing readable is left.
pub fn clean_line(line: &[u8]) -> Option<String> {
    // Look at no more than this many bytes: a longer line is cut anyway,
    // and 4 bytes per char bounds what PROGRESS_MAX_CHARS chars can take.
    const MAX_BYTES: usize = PROGRESS_MAX_CHARS * 4 + 64;
    let bytes = strip_escapes(line);
    // A carriage return moves back to the start of the line: what the
    // terminal shows is the last non-empty segment.
    let segment = bytes.split(|b| *b == b'\r').rfind(|s| s.iter().any(|b| !b.is_ascii_whitespace())).unwrap_or(&[]);
    let segment = &segment[..segment.len().min(MAX_BYTES)];
    let text = String::from_utf8_lossy(segment);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    let trimmed = out.trim();
    if trimmed.is_empty() {
        None
    } else if trimmed.len() == out.len() {
        Some(out)
    } else {
        Some(trimmed.to_owned())
    }
}

/// `line` without terminal escape sequences (7-bit forms).
fn strip_escapes(line: &[u8]) -> Vec<u8> {
    const ESC: u8 = 0x1b;
    const BEL: u8 = 0x07;
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b != ESC {
            if b != 0x08 {
                out.push(b);
            }
            i += 1;
            continue;
        }
        // An escape sequence starts at i.
        let Some(&kind) = line.get(i + 1) else {
            break;
        };
        match kind {
            // CSI: parameters and intermediates, then a final byte 0x40..=0x7e.
            b'[' => {
                let mut j = i + 2;
                while j < line.len() && !(0x40..=0x7e).contains(&line[j]) {
                    j += 1;
                }
                i = j + 1;
            }
            // OSC, DCS, SOS, PM, APC: a string ended by BEL or ESC \.
            b']' | b'P' | b'X' | b'^' | b'_' => {
                let mut j = i + 2;
                loop {
                    if j >= line.len() {
                        i = j;
                        break;
                    }
                    if line[j] == BEL {
                        i = j + 1;
                        break;
                    }
                    if line[j] == ESC && line.get(j + 1) == Some(&b'\\') {
                        i = j + 2;
                        break;
                    }
                    j += 1;
                }
            }
            // nF: intermediates 0x20..=0x2f, then a final byte (ESC ( B).
            0x20..=0x2f => {
                let mut j = i + 2;
                while j < line.len() && (0x20..=0x2f).contains(&line[j]) {
                    j += 1;
                }
                i = j + 1;
            }
            // Any other two-byte form (ESC 7, ESC =, ESC M...).
            _ => i += 2,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::Options;
    use crate::Harness;

    #[test]
    fn generic_needs_a_command_and_runs_it_as_given() {
        let err = Harness::Generic.launch("", "t", &Options::default(), &[]).unwrap_err();
        assert!(err.contains("needs a command"), "{err}");
        let launch = Harness::Generic.launch("", "t", &Options::default(), &["make".into(), "test".into()]).unwrap();
        assert_eq!(
            launch,
            Launch { argv: vec!["make".into(), "test".into()], raw_pty: false, input: Input::Pty, first_input: None }
        );
        assert_eq!(Harness::Generic.delivery(), Delivery::TypeIntoPty);
    }

    fn texts(p: &mut GenericParser, line: &[u8]) -> Vec<String> {
        p.feed_line(line)
            .into_iter()
            .map(|e| match e {
                HarnessEvent::Progress { text } => text,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn strips_colours_titles_and_cursor_moves() {
        let mut p = GenericParser::new();
        assert_eq!(texts(&mut p, b"\x1b[1;32mok\x1b[0m done"), vec!["ok done".to_string()]);
        assert_eq!(texts(&mut p, b"\x1b]0;title\x07visible"), vec!["visible".to_string()]);
        assert_eq!(texts(&mut p, b"\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\"), vec!["link".to_string()]);
        assert_eq!(texts(&mut p, b"\x1b(Bplain\x1b=\x1b[?25l"), vec!["plain".to_string()]);
    }

    #[test]
    fn keeps_what_a_terminal_shows_after_carriage_returns() {
        let mut p = GenericParser::new();
        assert_eq!(texts(&mut p, b"10%\r50%\r100% done\r  "), vec!["100% done".to_string()]);
    }

    #[test]
    fn skips_empty_and_escape_only_lines() {
        let mut p = GenericParser::new();
        assert!(p.feed_line(b"").is_empty());
        assert!(p.feed_line(b"   \t ").is_empty());
        assert!(p.feed_line(b"\x1b[2K\x1b[1G").is_empty());
        assert!(p.feed_line(b"\x1b").is_empty());
        assert!(p.feed_line(b"\x1b[").is_empty());
        assert!(p.feed_line(b"\x1b]unterminated").is_empty());
    }

    #[test]
    fn lossy_utf8_and_control_bytes() {
        let mut p = GenericParser::new();
        assert_eq!(texts(&mut p, b"a\xffb\x00c\td"), vec!["a\u{fffd}bc d".to_string()]);
        assert_eq!(p.totals(), UsageTotals::default());
    }

    #[test]
    fn long_lines_are_bounded() {
        let mut p = GenericParser::new();
        let line = vec![b'x'; 1 << 20];
        let out = texts(&mut p, &line);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].chars().count(), PROGRESS_MAX_CHARS);
        assert!(out[0].ends_with('…'));
    }
}
