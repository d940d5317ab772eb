//! From an agent's output log to `output` events.
//!
//! The log keeps every byte the agent wrote; events are a readable summary
//! of it: one per line, ANSI escapes removed, at most `MAX_LINE` bytes, and
//! at most `RATE` lines a second per agent on average (bursts of `BURST`),
//! so an agent that floods its terminal cannot flood the journal. Lines
//! left out are counted in the next event's `skipped`.
//!
//! Every event records where its line ends in the log; a restarted daemon
//! resumes reading after the last one, so no line is reported twice.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Instant;

pub const MAX_LINE: usize = 400;
const RATE: f64 = 20.0;
const BURST: f64 = 100.0;
/// Read at most this much per call, so a flood is handled in slices.
const MAX_READ: u64 = 4 * 1024 * 1024;

/// One line for the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub text: String,
    /// Where the line ends in the log.
    pub offset: u64,
    /// Lines left out before this one.
    pub skipped: u64,
}

/// Reads an agent's log from where the last event left off.
pub struct OutputCursor {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    tokens: f64,
    refilled: Instant,
    skipped: u64,
}

impl OutputCursor {
    pub fn new(path: PathBuf, offset: u64) -> OutputCursor {
        OutputCursor { path, offset, partial: Vec::new(), tokens: BURST, refilled: Instant::now(), skipped: 0 }
    }

    /// Reads up to `upto` (or to the end of the log) and returns the lines
    /// to journal. With `last`, an unfinished final line counts as a line.
    pub fn read(&mut self, upto: Option<u64>, last: bool) -> std::io::Result<Vec<Line>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let end = file.metadata()?.len();
        let end = upto.map_or(end, |u| u.min(end));
        let mut lines = Vec::new();
        let read_from = self.offset + self.partial.len() as u64;
        if end > read_from {
            file.seek(SeekFrom::Start(read_from))?;
            let mut chunk = Vec::new();
            (&mut file).take((end - read_from).min(MAX_READ)).read_to_end(&mut chunk)?;
            let mut start = 0;
            for (i, &byte) in chunk.iter().enumerate() {
                if byte == b'\n' {
                    self.partial.extend_from_slice(&chunk[start..i]);
                    let line = std::mem::take(&mut self.partial);
                    self.offset += line.len() as u64 + 1;
                    self.push(&line, &mut lines);
                    start = i + 1;
                }
            }
            self.partial.extend_from_slice(&chunk[start..]);
            if read_from + (chunk.len() as u64) < end {
                // More than one slice waiting: the caller will be told again
                // by the next notice, or by `last`.
                let mut rest = self.read(upto, last)?;
                lines.append(&mut rest);
                return Ok(lines);
            }
        }
        if last && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.offset += line.len() as u64;
            self.push(&line, &mut lines);
        }
        if last && self.skipped > 0 {
            // Say how many lines were left out, even with nothing after them.
            lines.push(Line { text: String::new(), offset: self.offset, skipped: std::mem::take(&mut self.skipped) });
        }
        Ok(lines)
    }

    fn push(&mut self, raw: &[u8], out: &mut Vec<Line>) {
        let text = clean_line(raw);
        if text.is_empty() {
            return;
        }
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * RATE).min(BURST);
        self.refilled = now;
        if self.tokens < 1.0 {
            self.skipped += 1;
            return;
        }
        self.tokens -= 1.0;
        out.push(Line { text, offset: self.offset, skipped: std::mem::take(&mut self.skipped) });
    }
}

/// A line as a person would read it on screen: escapes removed, the last
/// carriage-return segment kept (progress bars redraw with `\r`), control
/// characters dropped, invalid UTF-8 replaced, and at most `MAX_LINE` bytes.
pub fn clean_line(raw: &[u8]) -> String {
    let stripped = strip_ansi(raw);
    let visible = stripped
        .split(|&b| b == b'\r')
        .rfind(|segment| segment.iter().any(|b| !b.is_ascii_whitespace()))
        .unwrap_or(&[]);
    let text = String::from_utf8_lossy(visible);
    let mut out: String = text.chars().filter(|c| !c.is_control() || *c == '\t').collect();
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    if out.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Removes ANSI escape sequences (CSI, OSC, and two-byte escapes).
pub fn strip_ansi(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] != 0x1b {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        match raw.get(i + 1) {
            Some(b'[') => {
                i += 2;
                while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                    i += 1;
                }
                i += 1;
            }
            Some(b']') => {
                i += 2;
                while i < raw.len() && raw[i] != 0x07 && !(raw[i] == 0x1b && raw.get(i + 1) == Some(&b'\\')) {
                    i += 1;
                }
                i += if raw.get(i) == Some(&0x07) { 1 } else { 2 };
            }
            Some(_) => i += 2,
            None => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cleans_lines() {
        assert_eq!(clean_line(b"\x1b[1;32mok\x1b[0m done\r"), "ok done");
        assert_eq!(clean_line(b"10%\r50%\r100%"), "100%");
        assert_eq!(clean_line(b"\x1b]0;title\x07hi"), "hi");
        assert_eq!(clean_line(b"\xff\xfebin\x00ary"), "\u{fffd}\u{fffd}binary");
        let long = clean_line(&[b'x'; 5000]);
        assert!(long.len() <= MAX_LINE + 3, "{}", long.len());
    }

    #[test]
    fn resumes_at_offsets_and_keeps_partial_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"one\r\ntwo\r\nthr").unwrap();
        let mut cursor = OutputCursor::new(path.clone(), 0);
        let lines = cursor.read(None, false).unwrap();
        assert_eq!(lines.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
        assert_eq!(lines[1].offset, 10);
        file.write_all(b"ee\r\n").unwrap();
        let lines = cursor.read(None, false).unwrap();
        assert_eq!(lines[0].text, "three");
        // A new cursor from the last offset sees nothing twice.
        let mut again = OutputCursor::new(path, lines[0].offset);
        assert!(again.read(None, true).unwrap().is_empty());
    }

    #[test]
    fn floods_are_counted_not_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut body = Vec::new();
        for i in 0..10_000 {
            writeln!(body, "line {i}").unwrap();
        }
        std::fs::write(&path, &body).unwrap();
        let mut cursor = OutputCursor::new(path, 0);
        let lines = cursor.read(None, true).unwrap();
        assert!(lines.len() < 200, "{} lines journaled", lines.len());
        let told: u64 =
            lines.iter().map(|l| 1 + l.skipped).sum::<u64>() - u64::from(lines.last().unwrap().text.is_empty());
        assert_eq!(told, 10_000);
    }
}
