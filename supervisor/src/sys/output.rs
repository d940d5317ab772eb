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
//! `LineCursor` splits the log into lines; `Limiter` keeps the rate.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Instant;

pub const MAX_LINE: usize = 400;
const RATE: f64 = 20.0;
const BURST: f64 = 100.0;
/// Read this much at most at a time, so a flood is handled in slices and
/// the daemon's memory follows the slice, not the backlog.
const MAX_READ: u64 = 256 * 1024;

/// One complete line of the log (without its `\n`).
#[derive(Debug, Clone, PartialEq)]
pub struct RawLine {
    pub bytes: Vec<u8>,
    /// Where the line ends in the log.
    pub offset: u64,
}

/// A line of the slice [`LineCursor::read_each`] is handing out, borrowed
/// from it: a flood of lines costs no allocation a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line<'a> {
    pub bytes: &'a [u8],
    /// Where the line ends in the log.
    pub offset: u64,
}

impl Line<'_> {
    pub fn to_raw(self) -> RawLine {
        RawLine { bytes: self.bytes.to_vec(), offset: self.offset }
    }
}

/// Reads an agent's log line by line from where the last event left off.
pub struct LineCursor {
    path: PathBuf,
    offset: u64,
    /// The unfinished line after `offset`, read already.
    partial: Vec<u8>,
}

impl LineCursor {
    pub fn new(path: PathBuf, offset: u64) -> LineCursor {
        LineCursor { path, offset, partial: Vec::new() }
    }

    /// How far complete lines have been read.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads up to `upto` (or to the end of the log) and returns the
    /// complete lines. With `last`, an unfinished final line counts too.
    pub fn read(&mut self, upto: Option<u64>, last: bool) -> std::io::Result<Vec<RawLine>> {
        let mut all = Vec::new();
        self.read_each(upto, last, |lines| all.extend(lines.iter().map(|l| l.to_raw())))?;
        Ok(all)
    }

    /// [`LineCursor::read`] a slice at a time: hands `each` the complete
    /// lines of every slice of at most `MAX_READ` bytes as it is read, so
    /// however far behind the reader is, only one slice is in memory. The
    /// slice is read behind the unfinished line of the one before, so every
    /// line is a piece of one buffer.
    pub fn read_each(
        &mut self,
        upto: Option<u64>,
        last: bool,
        mut each: impl FnMut(&[Line<'_>]),
    ) -> std::io::Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let end = file.metadata()?.len();
        let end = upto.map_or(end, |u| u.min(end));
        let mut buf = std::mem::take(&mut self.partial);
        loop {
            let read_from = self.offset + buf.len() as u64;
            if end <= read_from {
                break;
            }
            file.seek(SeekFrom::Start(read_from))?;
            let had = buf.len();
            (&mut file).take((end - read_from).min(MAX_READ)).read_to_end(&mut buf)?;
            if buf.len() == had {
                break;
            }
            let mut lines = Vec::new();
            let mut start = 0;
            // Only the new bytes can hold a newline: the old are unfinished.
            for i in memchr::memchr_iter(b'\n', &buf[had..]).map(|i| had + i) {
                self.offset += (i - start) as u64 + 1;
                lines.push(Line { bytes: &buf[start..i], offset: self.offset });
                start = i + 1;
            }
            if !lines.is_empty() {
                each(&lines);
            }
            buf.drain(..start);
        }
        if last && !buf.is_empty() {
            self.offset += buf.len() as u64;
            each(&[Line { bytes: &buf, offset: self.offset }]);
            buf.clear();
        }
        self.partial = buf;
        Ok(())
    }
}

/// At most `RATE` lines a second on average, in bursts of `BURST`; counts
/// what it turns away.
pub struct Limiter {
    tokens: f64,
    refilled: Instant,
    skipped: u64,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter { tokens: BURST, refilled: Instant::now(), skipped: 0 }
    }
}

impl Limiter {
    /// `Some(lines skipped before this one)` when this line may go to the
    /// journal at `now`, `None` when it is left out (and counted). A reader
    /// takes `now` once a slice of lines, not once a line.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if !self.would_admit(now) {
            self.skip();
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.skipped))
    }

    /// Whether a line would be admitted now, without taking it: a reader
    /// can leave a flood's lines out (with [`Limiter::skip`]) without
    /// cleaning each one first.
    pub fn would_admit(&mut self, now: Instant) -> bool {
        self.tokens = (self.tokens + now.saturating_duration_since(self.refilled).as_secs_f64() * RATE).min(BURST);
        self.refilled = self.refilled.max(now);
        self.tokens >= 1.0
    }

    /// Counts a line left out.
    pub fn skip(&mut self) {
        self.skipped += 1;
    }

    /// Lines left out since the last admitted one.
    pub fn take_skipped(&mut self) -> u64 {
        std::mem::take(&mut self.skipped)
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

/// The last `count` readable lines of a log (escapes removed, empty
/// lines left out), from at most its last 256 KiB.
pub fn tail_lines(log: &std::path::Path, count: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let lines: Vec<String> = bytes.split(|&b| b == b'\n').map(clean_line).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_line_written_in_pieces_is_read_whole_once_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        let mut cursor = LineCursor::new(path.clone(), 0);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"ab").unwrap();
        assert_eq!(cursor.read(None, false).unwrap(), []);
        file.write_all(b"c\r\nde").unwrap();
        assert_eq!(cursor.read(None, false).unwrap(), [RawLine { bytes: b"abc\r".to_vec(), offset: 5 }]);
        assert_eq!(cursor.offset(), 5);
        file.write_all(b"f\n\ng").unwrap();
        let lines = cursor.read(None, false).unwrap();
        assert_eq!(lines, [RawLine { bytes: b"def".to_vec(), offset: 9 }, RawLine { bytes: Vec::new(), offset: 10 }]);
        // The end of the agent: its unfinished last line counts.
        assert_eq!(cursor.read(None, true).unwrap(), [RawLine { bytes: b"g".to_vec(), offset: 11 }]);
        assert_eq!(cursor.read(None, true).unwrap(), []);
    }

    #[test]
    fn a_backlog_is_read_a_slice_at_a_time_and_nothing_is_lost_between_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("output.log");
        // About four slices of lines of every length, a partial one last.
        let mut text = Vec::new();
        let mut n = 0;
        while text.len() < 4 * MAX_READ as usize {
            text.extend(format!("{n} {}\n", "x".repeat(n % 97)).bytes());
            n += 1;
        }
        text.extend(b"unfinished");
        std::fs::write(&path, &text).unwrap();
        let mut slices = Vec::new();
        LineCursor::new(path.clone(), 0)
            .read_each(None, true, |lines| slices.push(lines.iter().map(|l| l.to_raw()).collect::<Vec<_>>()))
            .unwrap();
        assert!(slices.len() >= 4, "{} slices", slices.len());
        for slice in &slices {
            let bytes: usize = slice.iter().map(|l| l.bytes.len() + 1).sum();
            assert!(bytes <= 2 * MAX_READ as usize, "a slice of {bytes} bytes");
        }
        let lines: Vec<RawLine> = slices.into_iter().flatten().collect();
        assert_eq!(lines, LineCursor::new(path, 0).read(None, true).unwrap());
        assert_eq!(lines.len(), n + 1);
        assert_eq!(lines[n].bytes, b"unfinished");
        assert_eq!(lines[n].offset, text.len() as u64);
        assert!(lines.iter().take(n).enumerate().all(|(i, l)| l.bytes.starts_with(format!("{i} ").as_bytes())));
    }

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
        let mut cursor = LineCursor::new(path.clone(), 0);
        let lines = cursor.read(None, false).unwrap();
        let texts: Vec<String> = lines.iter().map(|l| clean_line(&l.bytes)).collect();
        assert_eq!(texts, ["one", "two"]);
        assert_eq!(lines[1].offset, 10);
        file.write_all(b"ee\r\n").unwrap();
        let lines = cursor.read(None, false).unwrap();
        assert_eq!(clean_line(&lines[0].bytes), "three");
        // A new cursor from the last offset sees nothing twice.
        let mut again = LineCursor::new(path, lines[0].offset);
        assert!(again.read(None, true).unwrap().is_empty());
    }

    #[test]
    fn reads_large_logs_in_slices_and_limits_floods() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut body = Vec::new();
        for i in 0..600_000 {
            writeln!(body, "line {i}").unwrap();
        }
        assert!(body.len() as u64 > MAX_READ);
        std::fs::write(&path, &body).unwrap();
        let lines = LineCursor::new(path, 0).read(None, true).unwrap();
        assert_eq!(lines.len(), 600_000);
        assert_eq!(lines.last().unwrap().offset, body.len() as u64);

        let mut limiter = Limiter::default();
        let admitted = (0..10_000).filter_map(|_| limiter.admit(Instant::now())).count();
        assert!(admitted < 200, "{admitted} lines admitted");
        assert_eq!(admitted as u64 + limiter.take_skipped(), 10_000);
    }
}
