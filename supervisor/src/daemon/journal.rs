//! The append-only event journal (`events.jsonl`).
//!
//! Guarantees:
//! - an event is written and fsynced before `append` returns, so anything
//!   the daemon acknowledges survives a crash of the daemon or the machine;
//! - seqs are contiguous from 1; a reader resuming after seq N gets N+1
//!   next, with nothing missed and nothing repeated;
//! - a torn last line (the daemon died mid-write) is cut off when the
//!   journal is opened, never fatal: it was never acknowledged;
//! - an append of several events is one commit: each of its lines begins
//!   `{"batch_end":SEQ,` (the seq of its last event), and opening folds
//!   the commit only once that event is read; a commit cut short by a
//!   crash is cut off whole, as a torn line is (so no reader ever sees a
//!   child's exit without the notice journaled with it);
//! - an append that fails (a full disk, a read-only filesystem, an I/O
//!   error; wholly or after a short write) is cut back to the last whole
//!   line and uses no seq: the file is always a run of whole lines with
//!   contiguous seqs, and nothing past its durable length is ever read;
//! - a line that is not a whole event anywhere but last (a damaged
//!   journal) is reported with its line number; the journal goes on from
//!   the whole prefix before it, and the rest is kept beside it
//!   (`events.jsonl.damaged-<time>`) rather than folded or thrown away.
//!
//! Only this module writes the journal file. A test-only fault seam
//! (`CORRAL_FAULT_INJECTION`, see [`Journal::injected_fault`]) makes each
//! of these failures happen on demand.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::{Event, EventBody, EVENT_VERSION};

/// The writer side, owned by the daemon.
pub struct Journal {
    path: PathBuf,
    file: File,
    last_seq: u64,
    /// The file's length after the last whole append: a failed append is
    /// cut back to it, so a torn line never stays in the middle.
    len: u64,
    /// Test-only fault injection (see [`Journal::injected_fault`]).
    faults: bool,
    /// A failed append could not be cut back yet: nothing is written until
    /// it is.
    needs_cut: bool,
    /// What opening found and repaired, for the daemon to journal.
    repair: Option<Repair>,
}

/// A damaged journal, repaired on open: where the damage began and where
/// the lines from there on were moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Repair {
    /// The first line that was not a whole event in sequence (1-based).
    pub line: usize,
    /// Why that line was not.
    pub reason: String,
    /// The bytes from that line on, kept aside.
    pub moved_to: PathBuf,
    pub bytes: u64,
}

/// What an event is about, before it gets its seq and time.
#[derive(Clone)]
pub struct Draft {
    pub agent: Option<crate::model::address::Address>,
    pub parent: Option<crate::model::address::Address>,
    pub task: Option<String>,
    pub body: EventBody,
}

/// Where a fold of the journal already stands (a snapshot's): every event
/// up to `seq` is folded, and those events are the file's first `len`
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    pub seq: u64,
    pub len: u64,
}

impl Journal {
    /// Opens (or creates) the journal, reads every event, and cuts off a
    /// torn last line. Returns the journal and the events in order.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Event>)> {
        let mut events = Vec::new();
        let journal = Journal::open_after(path, None, |event| events.push(event))?;
        Ok((journal, events))
    }

    /// Whether the journal at `path` holds `resume`: its first `resume.len`
    /// bytes end with a whole line, and that line is the event `resume.seq`.
    /// Reads only the end of that prefix.
    pub fn holds(path: &Path, resume: Resume) -> bool {
        let Ok(mut file) = File::open(path) else { return resume == Resume { seq: 0, len: 0 } };
        if resume.len == 0 {
            return resume.seq == 0;
        }
        let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if file_len < resume.len {
            return false;
        }
        // The last line before `len`: look back far enough for any event.
        let mut back = 64 * 1024u64;
        loop {
            let from = resume.len.saturating_sub(back);
            let mut bytes = vec![0u8; (resume.len - from) as usize];
            if file.seek(SeekFrom::Start(from)).is_err() || file.read_exact(&mut bytes).is_err() {
                return false;
            }
            if bytes.last() != Some(&b'\n') {
                return false;
            }
            let body = &bytes[..bytes.len() - 1];
            match body.iter().rposition(|&b| b == b'\n') {
                Some(newline) => return seq_of(&body[newline + 1..]) == Some(resume.seq),
                None if from == 0 => return seq_of(body) == Some(resume.seq),
                None => back *= 4,
            }
        }
    }

    /// Opens (or creates) the journal and hands `fold` every event after
    /// `resume` (all of them without one), in order, one at a time: the
    /// file is read as a stream, never whole. A torn last line is cut off;
    /// damage is kept aside as the module says. The caller has checked
    /// with [`Journal::holds`] that the journal holds `resume`.
    pub fn open_after(path: &Path, resume: Option<Resume>, mut fold: impl FnMut(Event)) -> Result<Journal> {
        let resume = resume.unwrap_or(Resume { seq: 0, len: 0 });
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io("cannot open the journal", path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io("cannot read the journal", path, e))?.len();
        let read_err = |e| Error::io("cannot read the journal", path, e);
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        reader.seek(SeekFrom::Start(resume.len)).map_err(read_err)?;

        let mut last_seq = resume.seq;
        let mut good_len = resume.len;
        let mut line_no = 0usize;
        let mut damage = None;
        let mut line = Vec::new();
        // The commit of several events being read: folded once whole.
        let mut commit: Option<Commit> = None;
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).map_err(read_err)?;
            if read == 0 {
                break;
            }
            line_no += 1;
            if line.last() != Some(&b'\n') {
                // No newline: the write of this line never finished.
                tracing::warn!("{}: dropping a torn last line ({read} bytes) left by a crash", path.display());
                break;
            }
            let last = good_len + read as u64 >= file_len;
            // Seqs run from 1, one a line: the line number is the seq.
            let expected = last_seq + 1;
            let why = match serde_json::from_slice::<Event>(&line[..read - 1]) {
                Ok(event) if event.seq == expected => {
                    let seq = event.seq;
                    match &mut commit {
                        Some(open) => {
                            open.events.push(event);
                            if seq >= open.end {
                                commit.take().into_iter().flat_map(|c| c.events).for_each(&mut fold);
                            }
                        }
                        None => match batch_end_of(&line).filter(|end| *end > seq) {
                            // The first line of a commit of several.
                            Some(end) => {
                                let events = vec![event];
                                commit = Some(Commit { end, start_len: good_len, start_seq: last_seq, events });
                            }
                            None => fold(event),
                        },
                    }
                    last_seq = seq;
                    good_len += read as u64;
                    continue;
                }
                Ok(event) => format!("event seq {} where {expected} was expected", event.seq),
                Err(err) => format!("not a whole event ({err})"),
            };
            if last {
                tracing::warn!("{}:{line_no}: dropping a torn last line: {why}", path.display());
            } else {
                damage = Some((line_no, why));
            }
            break;
        }
        drop(reader);
        if let Some(unfinished) = commit {
            // Never acknowledged: its appender died before the commit's
            // last line. Cut off whole, or kept aside with the damage.
            tracing::warn!(
                "{}: dropping a commit of {} events (seqs {} to {}) that a crash left unfinished",
                path.display(),
                unfinished.end - unfinished.start_seq,
                unfinished.start_seq + 1,
                unfinished.end
            );
            good_len = unfinished.start_len;
            last_seq = unfinished.start_seq;
        }
        let mut repair = None;
        if let Some((line, reason)) = damage {
            let line = resume.seq as usize + line;
            let moved_to = path.with_file_name(format!(
                "{}.damaged-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("events.jsonl"),
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            let keep_err = |e| Error::io("cannot keep the damaged part of the journal in", &moved_to, e);
            let mut kept = File::create(&moved_to).map_err(keep_err)?;
            (&file).seek(SeekFrom::Start(good_len)).map_err(read_err)?;
            std::io::copy(&mut (&file).take(file_len - good_len), &mut kept).map_err(keep_err)?;
            kept.sync_all().map_err(keep_err)?;
            tracing::error!(
                "{}:{line}: {reason}; the journal was damaged: it goes on from the {last_seq} whole events before \
                 line {line}, and the {} bytes from there on are kept in {}",
                path.display(),
                file_len - good_len,
                moved_to.display()
            );
            repair = Some(Repair { line, reason, moved_to, bytes: file_len - good_len });
        }
        if good_len < file_len {
            file.set_len(good_len).map_err(|e| Error::io("cannot repair the journal", path, e))?;
            file.sync_all().map_err(|e| Error::io("cannot sync the journal", path, e))?;
        }
        let faults = std::env::var_os("CORRAL_FAULT_INJECTION").is_some();
        Ok(Journal { path: path.to_path_buf(), file, last_seq, len: good_len, faults, needs_cut: false, repair })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening found damaged and repaired, once.
    pub fn take_repair(&mut self) -> Option<Repair> {
        self.repair.take()
    }

    /// The length of the whole, durable lines: readers read no further.
    pub fn durable_len(&self) -> u64 {
        self.len
    }

    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Gives the drafts their seqs and time, writes them and fsyncs once.
    pub fn append(&mut self, drafts: Vec<Draft>) -> Result<Vec<Event>> {
        let ts = chrono::Utc::now();
        let mut buffer = Vec::new();
        let count = drafts.len() as u64;
        let batch = count > 1;
        let mut events = Vec::with_capacity(drafts.len());
        for (i, draft) in drafts.into_iter().enumerate() {
            let event = Event {
                v: EVENT_VERSION,
                seq: self.last_seq + 1 + i as u64,
                ts,
                agent: draft.agent,
                parent: draft.parent,
                task: draft.task,
                body: draft.body,
            };
            let at = buffer.len();
            serde_json::to_writer(&mut buffer, &event).expect("events serialize");
            // A number JSON cannot hold (an infinite or NaN float) is
            // written as `null`, which no reader takes for a number: such a
            // line would end the journal's readable prefix. It is refused,
            // never written.
            let line = &buffer[at..];
            if line.windows(4).any(|w| w == b"null") && serde_json::from_slice::<Event>(line).is_err() {
                return Err(Error::other(format!(
                    "corral would journal an event it could not read back (a number JSON cannot hold?): {}",
                    String::from_utf8_lossy(line)
                )));
            }
            if batch {
                // The commit's mark first, so a reader finds it without
                // parsing the event (an object always opens with `{`).
                let mark = format!("{{\"{BATCH_END}\":{},", self.last_seq + count);
                buffer.splice(at..at + 1, mark.into_bytes());
            }
            buffer.push(b'\n');
            events.push(event);
        }
        if self.needs_cut {
            // An earlier failure left bytes past the last whole line.
            self.cut_back().map_err(|e| self.unwritable(e))?;
        }
        if let Err(err) = self.write_whole(&buffer) {
            // Undo whatever part reached the file (a short write, or data
            // the fsync could not make durable): the journal stays a run of
            // whole lines and no seq is used. If even that fails, nothing
            // more is written until it succeeds.
            if self.cut_back().is_err() {
                self.needs_cut = true;
            }
            return Err(self.unwritable(err));
        }
        self.len += buffer.len() as u64;
        self.last_seq += events.len() as u64;
        Ok(events)
    }

    fn cut_back(&mut self) -> std::io::Result<()> {
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        self.needs_cut = false;
        Ok(())
    }

    fn write_whole(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        match self.injected_fault() {
            Some(Fault::Fail { errno, short }) => {
                if short {
                    self.file.write_all(&buffer[..buffer.len() / 2])?;
                }
                return Err(std::io::Error::from_raw_os_error(errno as i32));
            }
            // Not the append it waits for.
            Some(Fault::Kill(_, Some(kind))) if memchr::memmem::find(buffer, kind.as_bytes()).is_none() => {}
            Some(Fault::Kill(point, _)) => {
                // The daemon dies at this point of the append, as SIGKILL
                // would have it: nothing after runs.
                match point {
                    KillPoint::Before => {}
                    KillPoint::Mid => self.file.write_all(&buffer[..buffer.len() / 2])?,
                    KillPoint::AfterWrite => self.file.write_all(buffer)?,
                    KillPoint::AfterSync => {
                        self.file.write_all(buffer)?;
                        self.file.sync_data()?;
                    }
                }
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
            None => {}
        }
        self.file.write_all(buffer)?;
        self.file.sync_data()
    }

    /// The error for an append that failed: names the state folder and the
    /// cause, in the words a person needs ("is full").
    fn unwritable(&self, err: std::io::Error) -> Error {
        let folder = self.path.parent().unwrap_or(&self.path).display();
        let why = match err.raw_os_error().map(nix::errno::Errno::from_raw) {
            Some(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT) => format!("is full ({err})"),
            Some(nix::errno::Errno::EROFS) => format!("is on a read-only filesystem ({err})"),
            _ => format!("cannot be written ({err})"),
        };
        Error::new(ErrorKind::StateUnwritable, format!("the state folder {folder} {why}; nothing was changed"))
    }

    /// A fault a test asked for: with `CORRAL_FAULT_INJECTION` set in the
    /// daemon's environment, a file `journal.fault` beside the journal
    /// makes every append fail with the errno it names (`ENOSPC`, `EIO`,
    /// `EROFS`, `EDQUOT`), after writing half the lines first if it also
    /// says `short`; or, with `kill:before`, `kill:mid`, `kill:after-write`
    /// or `kill:after-sync`, makes the daemon SIGKILL itself at that point
    /// of the next append (followed by an event type, `kill:after-sync
    /// started`, of the next append holding an event of that type).
    /// Removing the file ends the fault.
    fn injected_fault(&self) -> Option<Fault> {
        if !self.faults {
            return None;
        }
        let text = std::fs::read_to_string(self.path.with_file_name("journal.fault")).ok()?;
        let mut words = text.split_whitespace();
        let word = words.next()?;
        if let Some(point) = word.strip_prefix("kill:") {
            let point = match point {
                "before" => KillPoint::Before,
                "mid" => KillPoint::Mid,
                "after-write" => KillPoint::AfterWrite,
                _ => KillPoint::AfterSync,
            };
            return Some(Fault::Kill(point, words.next().map(|kind| format!(r#""type":"{kind}""#))));
        }
        let errno = match word {
            "ENOSPC" => nix::errno::Errno::ENOSPC,
            "EDQUOT" => nix::errno::Errno::EDQUOT,
            "EROFS" => nix::errno::Errno::EROFS,
            _ => nix::errno::Errno::EIO,
        };
        Some(Fault::Fail { errno, short: text.contains("short") })
    }
}

/// The key that marks each line of a commit of several events.
const BATCH_END: &str = "batch_end";

/// A commit of several events, read in part.
struct Commit {
    /// The seq of its last event.
    end: u64,
    /// The journal's whole length and last seq before it.
    start_len: u64,
    start_seq: u64,
    events: Vec<Event>,
}

/// The seq of the last event of the commit a line belongs to, when the
/// line carries the mark (it opens the line, as appends write it).
fn batch_end_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"")?.strip_prefix(BATCH_END.as_bytes())?.strip_prefix(b"\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The seq of a journal line, read without parsing the whole event.
fn seq_of(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    serde_json::from_slice::<Seq>(line).ok().map(|s| s.seq)
}

/// An injected fault (tests only).
enum Fault {
    Fail {
        errno: nix::errno::Errno,
        short: bool,
    },
    /// At this point; of an append holding this `"type":"..."` if given.
    Kill(KillPoint, Option<String>),
}

/// Where in an append an injected SIGKILL lands.
enum KillPoint {
    Before,
    Mid,
    AfterWrite,
    AfterSync,
}

/// A reader that follows the journal from a seq onwards. It reads only up
/// to the durable length the writer published (so it never sees a line
/// that a failed append wrote and then cut back), and never keeps part of
/// a line: a partial one is read again, whole, next time.
///
/// It starts without reading what comes before its seq: seqs run from 1,
/// one a line, so the file is its own index, and a bisection over its
/// bytes finds the line in a few reads however long the journal is.
pub struct JournalReader {
    reader: BufReader<File>,
    /// The end of the last whole line read.
    offset: u64,
    next_seq: u64,
    /// The start was found (by bisection) already.
    placed: bool,
}

/// Below this many bytes, reading on is cheaper than bisecting further.
const SCAN_WINDOW: u64 = 64 * 1024;

impl JournalReader {
    /// A reader whose first event will be `since + 1`.
    pub fn open(path: &Path, since: u64) -> Result<JournalReader> {
        let file = File::open(path).map_err(|e| Error::io("cannot open the journal", path, e))?;
        Ok(JournalReader { reader: BufReader::new(file), offset: 0, next_seq: since + 1, placed: since == 0 })
    }

    /// The events written since the last call, up to `durable_len` bytes
    /// into the file (whole lines only).
    pub fn read_new(&mut self, durable_len: u64) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        if !self.placed {
            self.offset = self.find_start(durable_len).map_err(|e| Error::other(e.to_string()))?;
            self.placed = true;
        }
        if durable_len <= self.offset {
            return Ok(out);
        }
        self.reader.seek(SeekFrom::Start(self.offset)).map_err(|e| Error::other(e.to_string()))?;
        let mut limited = (&mut self.reader).take(durable_len - self.offset);
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = limited.read_until(b'\n', &mut line).map_err(|e| Error::other(e.to_string()))?;
            if read == 0 || !line.ends_with(b"\n") {
                return Ok(out);
            }
            self.offset += read as u64;
            let Ok(event) = serde_json::from_slice::<Event>(&line) else { continue };
            if event.seq >= self.next_seq {
                self.next_seq = event.seq + 1;
                out.push(event);
            }
        }
    }

    /// The start of a line at or before the line of `next_seq`, close to
    /// it: bisects `[0, durable_len)`, keeping `lo` at the start of a line
    /// whose seq is at most `next_seq`. A line it cannot read stops the
    /// bisection where it is (reading on from `lo` is still right).
    fn find_start(&mut self, durable_len: u64) -> std::io::Result<u64> {
        let (mut lo, mut hi) = (0u64, durable_len);
        while hi - lo > SCAN_WINDOW {
            let mid = lo + (hi - lo) / 2;
            match self.line_at_or_after(mid, hi)? {
                Some((start, Some(seq))) if seq <= self.next_seq => lo = start,
                Some((_, Some(_))) | None => hi = mid,
                Some((_, None)) => break,
            }
        }
        Ok(lo)
    }

    /// The first line that starts at or after `at` (and before `end`):
    /// where it starts and its seq (`None` when it does not parse).
    fn line_at_or_after(&mut self, at: u64, end: u64) -> std::io::Result<Option<(u64, Option<u64>)>> {
        // A line starts where the byte before it is a newline.
        self.reader.seek(SeekFrom::Start(at - 1))?;
        let mut skipped = Vec::new();
        let read = (&mut self.reader).take(end - (at - 1)).read_until(b'\n', &mut skipped)?;
        if !skipped.ends_with(b"\n") {
            return Ok(None);
        }
        let start = at - 1 + read as u64;
        if start >= end {
            return Ok(None);
        }
        let mut line = Vec::new();
        (&mut self.reader).take(end - start).read_until(b'\n', &mut line)?;
        let seq = line.strip_suffix(b"\n").and_then(seq_of);
        Ok(Some((start, seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::address::Address;

    fn draft(pid: u32) -> Draft {
        Draft {
            agent: Some(Address::parse("/root/a").unwrap()),
            parent: Some(Address::root()),
            task: None,
            body: EventBody::DaemonStarted { pid },
        }
    }

    #[test]
    fn appends_with_contiguous_seqs_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, events) = Journal::open(&path).unwrap();
        assert!(events.is_empty());
        journal.append(vec![draft(1), draft(2)]).unwrap();
        journal.append(vec![draft(3)]).unwrap();
        drop(journal);
        let (journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(journal.last_seq(), 3);
    }

    #[test]
    fn torn_last_line_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(vec![draft(1), draft(2)]).unwrap();
        drop(journal);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"v":1,"seq":3,"ts":"2026-"#).unwrap();
        drop(file);

        let (mut journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.len(), 2);
        let appended = journal.append(vec![draft(4)]).unwrap();
        assert_eq!(appended[0].seq, 3);
        let (_, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_commit_cut_short_by_a_crash_is_cut_off_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(vec![draft(1)]).unwrap();
        journal.append(vec![draft(2), draft(3), draft(4)]).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let text = String::from_utf8(whole.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(!lines[0].contains(BATCH_END), "a commit of one event carries no mark: {}", lines[0]);
        assert!(lines[1..].iter().all(|l| l.starts_with(r#"{"batch_end":4,"#)), "{lines:?}");
        drop(journal);
        // Readers parse the marked lines as the events they are.
        let (_, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);

        // The crash left the commit's first two lines whole and its third
        // torn, or not written at all: none of the commit is folded.
        let second_line_end = lines[0].len() + lines[1].len() + lines[2].len() + 3;
        for cut in [second_line_end + 10, second_line_end] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            let (mut journal, events) = Journal::open(&path).unwrap();
            assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), lines[0].len() as u64 + 1);
            assert_eq!(journal.append(vec![draft(9)]).unwrap()[0].seq, 2);
        }
    }

    #[test]
    fn an_event_that_could_not_be_read_back_is_refused_and_the_journal_stays_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(vec![draft(1)]).unwrap();
        let infinite = Draft {
            body: EventBody::BudgetRaised {
                kind: crate::model::budget::BudgetKind::Cost,
                added: 1.0,
                limit: f64::INFINITY,
                by: "/root".into(),
            },
            ..draft(2)
        };
        let err = journal.append(vec![infinite]).unwrap_err();
        assert!(err.message.contains("could not read back"), "{err}");
        journal.append(vec![draft(3)]).unwrap();
        drop(journal);
        let (mut journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(journal.take_repair().is_none());
    }

    #[test]
    fn reader_resumes_after_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append((1..=5).map(draft).collect()).unwrap();
        let mut reader = JournalReader::open(&path, 2).unwrap();
        let seqs: Vec<u64> = reader.read_new(journal.durable_len()).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        journal.append(vec![draft(6)]).unwrap();
        let seqs: Vec<u64> = reader.read_new(journal.durable_len()).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![6]);
        assert!(reader.read_new(journal.durable_len()).unwrap().is_empty());
    }

    #[test]
    fn a_reader_far_into_a_long_journal_bisects_to_its_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        // Far more than the scan window, so the start is bisected.
        journal.append((1..=20_000).map(draft).collect()).unwrap();
        let len = journal.durable_len();
        for since in [0, 1, 2, 9_999, 15_000, 19_998, 19_999, 20_000, 25_000] {
            let mut reader = JournalReader::open(&path, since).unwrap();
            let seqs: Vec<u64> = reader.read_new(len).unwrap().iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (since + 1..=20_000).collect::<Vec<_>>(), "since {since}");
        }
        let mut reader = JournalReader::open(&path, 15_000).unwrap();
        let start = reader.find_start(len).unwrap();
        assert!(start > len / 2 && len - start > 0, "it read from byte {start} of {len}");
        // A line that cannot be read only stops the bisection: still right.
        let mut text = lines(&path);
        text[10_000] = "not an event".into();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        let mut reader = JournalReader::open(&path, 19_990).unwrap();
        let seqs: Vec<u64> = reader.read_new(len).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (19_991..=20_000).collect::<Vec<_>>());
    }

    #[test]
    fn opening_after_a_resume_point_folds_only_what_follows_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append((1..=3).map(draft).collect()).unwrap();
        let resume = Resume { seq: 3, len: journal.durable_len() };
        journal.append((4..=6).map(draft).collect()).unwrap();
        drop(journal);
        assert!(Journal::holds(&path, resume));
        assert!(!Journal::holds(&path, Resume { seq: 2, len: resume.len }));
        assert!(!Journal::holds(&path, Resume { seq: 3, len: resume.len + 1 }));
        assert!(!Journal::holds(&path, Resume { seq: 9, len: 1 << 20 }));
        let mut seen = Vec::new();
        let mut journal = Journal::open_after(&path, Some(resume), |e| seen.push(e.seq)).unwrap();
        assert_eq!((seen, journal.last_seq()), (vec![4, 5, 6], 6));
        assert_eq!(journal.append(vec![draft(7)]).unwrap()[0].seq, 7);
        drop(journal);
        // Damage after the resume point is named by its line in the whole file.
        let mut text = lines(&path);
        text[4] = "{\"v\":1,\"seq\":5,\"ts\"".into();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        let mut journal = Journal::open_after(&path, Some(resume), |_| {}).unwrap();
        assert_eq!(journal.take_repair().map(|r| r.line), Some(5));
        // Seq 4 was whole, but of the same commit as the damaged 5: the
        // commit is kept aside whole.
        assert_eq!(journal.last_seq(), 3);
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_reported_and_the_journal_goes_on_from_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        for pid in 1..=5 {
            journal.append(vec![draft(pid)]).unwrap();
        }
        drop(journal);
        let mut text = lines(&path);
        text[2] = r#"{"v":1,"seq":3,"ts":"2026-12-01T00:00:00Z","type":"daemon_st"#.to_string();
        std::fs::write(&path, text.join("\n") + "\n").unwrap();

        let (mut journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        let repair = journal.take_repair().expect("a repair");
        assert_eq!(repair.line, 3);
        assert!(repair.reason.contains("not a whole event"), "{}", repair.reason);
        let kept = std::fs::read_to_string(&repair.moved_to).unwrap();
        assert_eq!(kept.lines().count(), 3, "lines 3 to 5 kept aside: {kept}");
        assert_eq!(repair.bytes, kept.len() as u64);
        // It goes on from seq 2, whole.
        assert_eq!(journal.append(vec![draft(9)]).unwrap()[0].seq, 3);
        let (_, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_seq_out_of_order_in_the_middle_is_damage_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        for pid in 1..=4 {
            journal.append(vec![draft(pid)]).unwrap();
        }
        drop(journal);
        let mut text = lines(&path);
        text[1] = text[1].replace("\"seq\":2", "\"seq\":7");
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        let (mut journal, events) = Journal::open(&path).unwrap();
        assert_eq!(events.len(), 1);
        let repair = journal.take_repair().unwrap();
        assert_eq!((repair.line, repair.reason.as_str()), (2, "event seq 7 where 2 was expected"));
    }

    #[test]
    fn a_failed_or_short_append_is_cut_back_and_uses_no_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.faults = true;
        journal.append(vec![draft(1), draft(2)]).unwrap();
        let whole = std::fs::read(&path).unwrap();
        let mut reader = JournalReader::open(&path, 0).unwrap();
        assert_eq!(reader.read_new(journal.durable_len()).unwrap().len(), 2);
        for fault in ["ENOSPC", "ENOSPC short", "EIO short", "EROFS", "EDQUOT short"] {
            std::fs::write(dir.path().join("journal.fault"), fault).unwrap();
            let err = journal.append(vec![draft(3), draft(4), draft(5)]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::StateUnwritable, "{fault}");
            assert!(err.message.contains(&dir.path().display().to_string()), "{fault}: {err}");
            assert_eq!(std::fs::read(&path).unwrap(), whole, "{fault}: the file changed");
            assert_eq!(journal.last_seq(), 2, "{fault}");
            assert!(reader.read_new(journal.durable_len()).unwrap().is_empty(), "{fault}");
        }
        std::fs::remove_file(dir.path().join("journal.fault")).unwrap();
        assert_eq!(journal.append(vec![draft(6)]).unwrap()[0].seq, 3);
        assert_eq!(reader.read_new(journal.durable_len()).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
        let (_, events) = Journal::open(&path).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_reader_never_reads_past_the_durable_length_nor_keeps_part_of_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append(vec![draft(1)]).unwrap();
        let durable = journal.durable_len();
        // Half a line past the durable end (a failed write in flight).
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"v":1,"seq":2,"ts":"#).unwrap();
        let mut reader = JournalReader::open(&path, 0).unwrap();
        assert_eq!(reader.read_new(durable + 100).unwrap().len(), 1);
        // Cut back, then a whole line: read whole, not glued to the half.
        file.set_len(durable).unwrap();
        journal.append(vec![draft(2)]).unwrap();
        let seqs: Vec<u64> = reader.read_new(journal.durable_len()).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2]);
    }
}
