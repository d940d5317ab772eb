//! The append-only event journal (`events.jsonl`).
//!
//! Guarantees:
//! - an event is written and fsynced before `append` returns, so anything
//!   the daemon acknowledges survives a crash of the daemon or the machine;
//! - seqs are contiguous from 1; a reader resuming after seq N gets N+1
//!   next, with nothing missed and nothing repeated;
//! - a torn last line (the daemon died mid-write) is cut off when the
//!   journal is opened, never fatal: it was never acknowledged;
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

impl Journal {
    /// Opens (or creates) the journal, reads every event, and cuts off a
    /// torn last line. Returns the journal and the events in order.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Event>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io("cannot open the journal", path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| Error::io("cannot read the journal", path, e))?;

        let mut events = Vec::new();
        let mut good_len = 0usize;
        let mut start = 0usize;
        let mut line_no = 0usize;
        let mut damage = None;
        while start < bytes.len() {
            line_no += 1;
            let Some(newline) = bytes[start..].iter().position(|&b| b == b'\n') else {
                // No newline: the write of this line never finished.
                tracing::warn!(
                    "{}: dropping a torn last line ({} bytes) left by a crash",
                    path.display(),
                    bytes.len() - start
                );
                break;
            };
            let line = &bytes[start..start + newline];
            let last = start + newline + 1 >= bytes.len();
            let expected = events.last().map(|e: &Event| e.seq + 1).unwrap_or(1);
            let why = match serde_json::from_slice::<Event>(line) {
                Ok(event) if event.seq == expected => {
                    events.push(event);
                    start += newline + 1;
                    good_len = start;
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
        let mut repair = None;
        if let Some((line, reason)) = damage {
            let moved_to = path.with_file_name(format!(
                "{}.damaged-{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("events.jsonl"),
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            std::fs::write(&moved_to, &bytes[good_len..])
                .map_err(|e| Error::io("cannot keep the damaged part of the journal in", &moved_to, e))?;
            tracing::error!(
                "{}:{line}: {reason}; the journal was damaged: it goes on from the {} whole events before line {line}, \
                 and the {} bytes from there on are kept in {}",
                path.display(),
                events.len(),
                bytes.len() - good_len,
                moved_to.display()
            );
            repair = Some(Repair { line, reason, moved_to, bytes: (bytes.len() - good_len) as u64 });
        }
        if good_len < bytes.len() {
            file.set_len(good_len as u64).map_err(|e| Error::io("cannot repair the journal", path, e))?;
            file.sync_all().map_err(|e| Error::io("cannot sync the journal", path, e))?;
        }
        let last_seq = events.last().map(|e| e.seq).unwrap_or(0);
        let faults = std::env::var_os("CORRAL_FAULT_INJECTION").is_some();
        let journal = Journal {
            path: path.to_path_buf(),
            file,
            last_seq,
            len: good_len as u64,
            faults,
            needs_cut: false,
            repair,
        };
        Ok((journal, events))
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
            serde_json::to_writer(&mut buffer, &event).expect("events serialize");
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
            Some(Fault::Kill(point)) => {
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
    /// of the next append. Removing the file ends the fault.
    fn injected_fault(&self) -> Option<Fault> {
        if !self.faults {
            return None;
        }
        let text = std::fs::read_to_string(self.path.with_file_name("journal.fault")).ok()?;
        let word = text.split_whitespace().next()?;
        if let Some(point) = word.strip_prefix("kill:") {
            return Some(Fault::Kill(match point {
                "before" => KillPoint::Before,
                "mid" => KillPoint::Mid,
                "after-write" => KillPoint::AfterWrite,
                _ => KillPoint::AfterSync,
            }));
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

/// An injected fault (tests only).
enum Fault {
    Fail { errno: nix::errno::Errno, short: bool },
    Kill(KillPoint),
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
pub struct JournalReader {
    reader: BufReader<File>,
    /// The end of the last whole line read.
    offset: u64,
    next_seq: u64,
}

impl JournalReader {
    /// A reader whose first event will be `since + 1`.
    pub fn open(path: &Path, since: u64) -> Result<JournalReader> {
        let file = File::open(path).map_err(|e| Error::io("cannot open the journal", path, e))?;
        Ok(JournalReader { reader: BufReader::new(file), offset: 0, next_seq: since + 1 })
    }

    /// The events written since the last call, up to `durable_len` bytes
    /// into the file (whole lines only).
    pub fn read_new(&mut self, durable_len: u64) -> Result<Vec<Event>> {
        let mut out = Vec::new();
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

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
    }

    #[test]
    fn a_damaged_line_in_the_middle_is_reported_and_the_journal_goes_on_from_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        journal.append((1..=5).map(draft).collect()).unwrap();
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
        journal.append((1..=4).map(draft).collect()).unwrap();
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
