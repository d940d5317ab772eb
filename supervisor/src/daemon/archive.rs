//! The records of agents put away (`done.jsonl`): the whole record of each
//! done agent the table holds only a summary of, one JSON line each, so
//! the daemon's memory follows its live agents, not its history.
//!
//! Guarantees:
//! - the file is only ever appended to, and a record, once written, is
//!   never moved or rewritten: a [`Spot`] stays good for the life of the
//!   file, so a reader may read one after letting go of the table;
//! - it is fsynced before any snapshot that names a spot in it is written
//!   (the store's writer does both), so a snapshot never points past what
//!   a crash kept; what a crash cut off the end was named by no snapshot,
//!   and is written again from the journal's fold;
//! - nothing here is the truth: the journal is. A snapshot whose spots
//!   this file does not reach is set aside, and the whole journal folded.
//!
//! Only the store's writer appends; anyone may read.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::lifecycle::{AgentRecord, Spot};

pub(super) struct Archive {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    len: AtomicU64,
}

impl Archive {
    /// The file beside the journal at `journal`.
    pub(super) fn path_for(journal: &Path) -> PathBuf {
        journal.with_file_name("done.jsonl")
    }

    /// Opens (or makes) the file beside `journal`; records go after
    /// whatever it holds, a torn end included (no spot names that).
    pub(super) fn open(journal: &Path) -> std::io::Result<Archive> {
        let path = Archive::path_for(journal);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Archive { file, path, len: AtomicU64::new(len) })
    }

    /// How long the file is: every spot handed out ends at or before it.
    pub(super) fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Appends the records (not yet synced: see [`Archive::sync`]) and
    /// says where each went.
    pub(super) fn append(&self, records: &[&AgentRecord]) -> std::io::Result<Vec<Spot>> {
        let mut bytes = Vec::new();
        let mut spots = Vec::with_capacity(records.len());
        let start = self.len();
        for record in records {
            let offset = start + bytes.len() as u64;
            serde_json::to_writer(&mut bytes, record)?;
            let len = u32::try_from(start + bytes.len() as u64 - offset).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            spots.push(Spot { offset, len });
        }
        self.file.write_all_at(&bytes, start)?;
        self.len.store(start + bytes.len() as u64, Ordering::Release);
        Ok(spots)
    }

    /// Makes everything appended so far durable.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The record at `spot`.
    pub(super) fn read(&self, spot: Spot) -> std::io::Result<AgentRecord> {
        let mut bytes = vec![0; spot.len as usize];
        self.file.read_exact_at(&mut bytes, spot.offset)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            std::io::Error::other(format!("{} at byte {}: not a whole record ({e})", self.path.display(), spot.offset))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::Event;

    #[test]
    fn records_read_back_from_their_spots_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("events.jsonl");
        let spawned = |name: &str, id: u64| {
            let event: Event = serde_json::from_value(serde_json::json!({
                "v": 1, "seq": id, "ts": "2026-12-01T10:00:00Z", "agent": format!("/root/{name}"),
                "type": "spawned", "id": id, "task_text": "t", "command": ["true"], "branch": "b",
                "worktree": "/w", "base": "abc",
            }))
            .unwrap();
            AgentRecord::from_spawned(&event).unwrap()
        };
        let (a, b) = (spawned("a", 1), spawned("b", 2));
        let archive = Archive::open(&journal).unwrap();
        let spots = archive.append(&[&a, &b]).unwrap();
        archive.sync().unwrap();
        // A torn end after them is written past, never read.
        std::fs::OpenOptions::new()
            .append(true)
            .open(Archive::path_for(&journal))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"half"))
            .unwrap();
        let archive = Archive::open(&journal).unwrap();
        let c = archive.append(&[&a]).unwrap()[0];
        assert_eq!(archive.read(spots[0]).unwrap(), a);
        assert_eq!(archive.read(spots[1]).unwrap(), b);
        assert_eq!(archive.read(c).unwrap(), a);
        assert_eq!(c.end() + 1, archive.len());
    }
}
