//! The append-only event journal (`events.jsonl`).
//!
//! Guarantees:
//! - an event is written and fsynced before `append` returns, so anything
//!   the daemon acknowledges survives a crash of the daemon or the machine;
//! - seqs are contiguous from 1; a reader resuming after seq N gets N+1
//!   next, with nothing missed and nothing repeated;
//! - a torn last line (the daemon died mid-write) is cut off when the
//!   journal is opened, never fatal: it was never acknowledged.
//!
//! Only this module writes the journal file.

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
}

/// What an event is about, before it gets its seq and time.
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
            start += newline + 1;
            match serde_json::from_slice::<Event>(line) {
                Ok(event) => {
                    let expected = events.last().map(|e: &Event| e.seq + 1).unwrap_or(1);
                    if event.seq != expected {
                        return Err(Error::other(format!(
                            "{}:{line_no}: event seq {} where {expected} was expected; the journal was edited or damaged",
                            path.display(),
                            event.seq
                        )));
                    }
                    events.push(event);
                    good_len = start;
                }
                Err(err) if start >= bytes.len() => {
                    tracing::warn!("{}:{line_no}: dropping a torn last line: {err}", path.display());
                }
                Err(err) => {
                    return Err(Error::other(format!(
                        "{}:{line_no}: not a valid event ({err}); the journal was edited or damaged",
                        path.display()
                    )));
                }
            }
        }
        if good_len < bytes.len() {
            file.set_len(good_len as u64).map_err(|e| Error::io("cannot repair the journal", path, e))?;
            file.sync_all().map_err(|e| Error::io("cannot sync the journal", path, e))?;
        }
        let last_seq = events.last().map(|e| e.seq).unwrap_or(0);
        let faults = std::env::var_os("CORRAL_FAULT_INJECTION").is_some();
        Ok((Journal { path: path.to_path_buf(), file, last_seq, len: good_len as u64, faults }, events))
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
        if let Err(err) = self.write_whole(&buffer) {
            // Undo whatever part reached the file (a short write, or data
            // the fsync could not make durable): the journal stays a run of
            // whole lines and no seq is used.
            let _ = self.file.set_len(self.len);
            let _ = self.file.sync_data();
            return Err(self.unwritable(err));
        }
        self.len += buffer.len() as u64;
        self.last_seq += events.len() as u64;
        Ok(events)
    }

    fn write_whole(&mut self, buffer: &[u8]) -> std::io::Result<()> {
        if let Some((errno, short)) = self.injected_fault() {
            if short {
                self.file.write_all(&buffer[..buffer.len() / 2])?;
            }
            return Err(std::io::Error::from_raw_os_error(errno as i32));
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
    /// says `short`. Removing the file ends the fault.
    fn injected_fault(&self) -> Option<(nix::errno::Errno, bool)> {
        if !self.faults {
            return None;
        }
        let text = std::fs::read_to_string(self.path.with_file_name("journal.fault")).ok()?;
        let errno = match text.split_whitespace().find(|w| w.starts_with('E'))? {
            "ENOSPC" => nix::errno::Errno::ENOSPC,
            "EDQUOT" => nix::errno::Errno::EDQUOT,
            "EROFS" => nix::errno::Errno::EROFS,
            _ => nix::errno::Errno::EIO,
        };
        Some((errno, text.contains("short")))
    }
}

/// A reader that follows the journal from a seq onwards. Readers never see
/// a partial line: the writer appends whole lines and they stop at the last
/// newline.
pub struct JournalReader {
    reader: BufReader<File>,
    pending: Vec<u8>,
    next_seq: u64,
}

impl JournalReader {
    /// A reader whose first event will be `since + 1`.
    pub fn open(path: &Path, since: u64) -> Result<JournalReader> {
        let file = File::open(path).map_err(|e| Error::io("cannot open the journal", path, e))?;
        Ok(JournalReader { reader: BufReader::new(file), pending: Vec::new(), next_seq: since + 1 })
    }

    /// The events written since the last call (complete lines only).
    pub fn read_new(&mut self) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        loop {
            let read = self.reader.read_until(b'\n', &mut self.pending).map_err(|e| Error::other(e.to_string()))?;
            if read == 0 || !self.pending.ends_with(b"\n") {
                // Partial line: keep it and wait for the rest.
                return Ok(out);
            }
            let line = std::mem::take(&mut self.pending);
            let Ok(event) = serde_json::from_slice::<Event>(&line) else { continue };
            if event.seq >= self.next_seq {
                self.next_seq = event.seq + 1;
                out.push(event);
            }
        }
    }

    /// Rewinds to the start (the journal is never rewritten in place, but
    /// a reader may want to start over).
    pub fn rewind(&mut self) -> Result<()> {
        self.reader.seek(SeekFrom::Start(0)).map_err(|e| Error::other(e.to_string()))?;
        self.pending.clear();
        Ok(())
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
        let seqs: Vec<u64> = reader.read_new().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        journal.append(vec![draft(6)]).unwrap();
        let seqs: Vec<u64> = reader.read_new().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![6]);
        assert!(reader.read_new().unwrap().is_empty());
    }
}
