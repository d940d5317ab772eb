//! Snapshots of the agent table (`snapshot.jsonl`), so a daemon starts
//! from the fold of the journal as it stood, and folds only the events
//! written after it, however long the history.
//!
//! A snapshot is the table as of one seq, with the journal length at which
//! that seq's line ends: a header line (`v`, `seq`, `journal_len`,
//! `last_id`, the daily spend, how many agents are held and how many put
//! away, and how long `done.jsonl` was), then one held agent's record a
//! line, then one put-away agent's summary a line (`[address, summary]`:
//! its whole record is in `done.jsonl`, written once, never again with
//! each snapshot). Version 1 snapshots (records only) are still read.
//!
//! Guarantees:
//! - a snapshot names only spots of `done.jsonl` synced before it was
//!   written; one that names more than the file holds is set aside;
//! - a snapshot is written beside the old one (`snapshot.jsonl.tmp`),
//!   fsynced, renamed over it, and the folder fsynced: a crash at any
//!   point leaves the old snapshot or the new one, whole, in use, never a
//!   half-made one; a leftover temporary file is removed, never read;
//! - the journal stays the truth and loses nothing: a snapshot that is not
//!   whole, of another version, or that the journal does not hold (its
//!   seq is not the line ending at its length: the journal was replaced
//!   or cut back by hand) is set aside with a warning
//!   (`snapshot.jsonl.unused-<time>`) and the whole journal is folded;
//! - nothing is removed from the journal: `events --since` reads all of it.
//!
//! Only this module writes snapshot files; the store decides when. A
//! test-only fault seam (`CORRAL_FAULT_INJECTION` and a file
//! `snapshot.fault` beside the journal) makes the daemon SIGKILL itself
//! while writing one: `kill:mid` (half the temporary file written),
//! `kill:before-rename` (all of it written and synced) or
//! `kill:after-rename` (renamed, the folder not yet synced).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon::journal::{Journal, Resume};
use crate::model::address::Address;
use crate::model::lifecycle::{AgentRecord, AgentTable, DailySpend, DoneAgent};

const SNAPSHOT_VERSION: u32 = 2;

/// The first line of a snapshot.
#[derive(Serialize, Deserialize)]
struct Header {
    v: u32,
    seq: u64,
    journal_len: u64,
    last_id: u64,
    daily: BTreeMap<String, DailySpend>,
    agents: usize,
    /// Put-away agents (after the held ones).
    #[serde(default)]
    done: usize,
    /// How long `done.jsonl` was when written: every spot ends by then.
    #[serde(default)]
    archive_len: u64,
}

/// The snapshot beside the journal at `journal`.
pub(super) fn path_for(journal: &Path) -> PathBuf {
    journal.with_file_name("snapshot.jsonl")
}

fn temporary(path: &Path) -> PathBuf {
    path.with_file_name("snapshot.jsonl.tmp")
}

/// The table of the snapshot beside `journal` and where the journal
/// goes on after it, if there is one the journal holds and whose spots
/// `done.jsonl` (now `archive_len` long) reaches. Anything else is said,
/// set aside and ignored: the caller folds the whole journal.
pub(super) fn load(journal: &Path, archive_len: u64) -> Option<(AgentTable, Resume)> {
    let path = path_for(journal);
    // A temporary file is what a crash left of a snapshot being written.
    let _ = std::fs::remove_file(temporary(&path));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
        Err(err) => {
            tracing::warn!("cannot read the snapshot {}: {err}; folding the whole journal", path.display());
            return None;
        }
    };
    match read(file, archive_len) {
        Ok((table, resume)) if Journal::holds(journal, resume) => Some((table, resume)),
        Ok((_, resume)) => {
            set_aside(&path, &format!("the journal does not hold its seq {} at byte {}", resume.seq, resume.len));
            None
        }
        Err(why) => {
            set_aside(&path, &why);
            None
        }
    }
}

fn read(file: File, archive_len: u64) -> std::result::Result<(AgentTable, Resume), String> {
    let mut lines = BufReader::with_capacity(1 << 20, file).lines();
    let mut next = || lines.next().transpose().map_err(|e| format!("cannot be read ({e})"));
    let header = next()?.ok_or("it is empty")?;
    let header: Header = serde_json::from_str(&header).map_err(|e| format!("its header is not whole ({e})"))?;
    if header.v != SNAPSHOT_VERSION && header.v != 1 {
        return Err(format!("it is of version {}, not {SNAPSHOT_VERSION}", header.v));
    }
    if header.archive_len > archive_len {
        return Err(format!(
            "it names records up to byte {} of done.jsonl, which holds {archive_len}",
            header.archive_len
        ));
    }
    let mut table = AgentTable::default();
    (table.last_id, table.daily) = (header.last_id, header.daily);
    let total = header.agents + header.done;
    for n in 1..=header.agents {
        let line = next()?.ok_or_else(|| format!("it ends after {} of its {total} agents", n - 1))?;
        let record: AgentRecord =
            serde_json::from_str(&line).map_err(|e| format!("agent line {n} is not whole ({e})"))?;
        table.agents.insert(record.address.clone(), record);
    }
    for n in header.agents + 1..=total {
        let line = next()?.ok_or_else(|| format!("it ends after {} of its {total} agents", n - 1))?;
        let (address, done): (Address, DoneAgent) =
            serde_json::from_str(&line).map_err(|e| format!("agent line {n} is not whole ({e})"))?;
        if done.spot.end() > header.archive_len {
            return Err(format!("agent line {n} names bytes past done.jsonl's {}", header.archive_len));
        }
        table.insert_away(address, done);
    }
    if next()?.is_some() {
        return Err(format!("it holds more than its {total} agents"));
    }
    Ok((table, Resume { seq: header.seq, len: header.journal_len }))
}

fn set_aside(path: &Path, why: &str) {
    // A name of its own, even for two set aside within one millisecond.
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let aside = (0..)
        .map(|n| match n {
            0 => path.with_file_name(format!("snapshot.jsonl.unused-{stamp}")),
            n => path.with_file_name(format!("snapshot.jsonl.unused-{stamp}-{n}")),
        })
        .find(|candidate| !candidate.exists())
        .expect("a free name");
    let moved = std::fs::rename(path, &aside);
    tracing::warn!(
        "the snapshot {} is not used: {why}; folding the whole journal instead{}",
        path.display(),
        match moved {
            Ok(()) => format!(" (the snapshot is kept as {})", aside.display()),
            Err(err) => format!(" (it could not be moved aside: {err})"),
        }
    );
}

/// Writes `table`, the fold of the journal up to `resume`, as the
/// snapshot beside `journal`, replacing the old one only once the new one
/// is whole and durable. `done.jsonl` must be synced up to `archive_len`,
/// past every spot the table names.
pub(super) fn write(journal: &Path, table: &AgentTable, resume: Resume, archive_len: u64) -> std::io::Result<()> {
    let path = path_for(journal);
    let tmp = temporary(&path);
    let fault = injected_fault(journal);
    let file = File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    let header = Header {
        v: SNAPSHOT_VERSION,
        seq: resume.seq,
        journal_len: resume.len,
        last_id: table.last_id,
        daily: table.daily.clone(),
        agents: table.agents.len(),
        done: table.len() - table.agents.len(),
        archive_len,
    };
    serde_json::to_writer(&mut out, &header)?;
    out.write_all(b"\n")?;
    let half = table.len() / 2;
    let mid = |n: usize, out: &mut BufWriter<&File>| {
        if fault.as_deref() == Some("kill:mid") && n == half {
            out.flush()?;
            kill_self();
        }
        Ok::<(), std::io::Error>(())
    };
    for (n, record) in table.agents.values().enumerate() {
        mid(n, &mut out)?;
        serde_json::to_writer(&mut out, record)?;
        out.write_all(b"\n")?;
    }
    for (n, away) in table.away().enumerate() {
        mid(table.agents.len() + n, &mut out)?;
        serde_json::to_writer(&mut out, &away)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    file.sync_all()?;
    if fault.as_deref() == Some("kill:before-rename") {
        kill_self();
    }
    std::fs::rename(&tmp, &path)?;
    if fault.as_deref() == Some("kill:after-rename") {
        kill_self();
    }
    if let Some(folder) = path.parent() {
        File::open(folder)?.sync_all()?;
    }
    Ok(())
}

/// The fault a test asked for (see the module's docs).
fn injected_fault(journal: &Path) -> Option<String> {
    std::env::var_os("CORRAL_FAULT_INJECTION")?;
    let text = std::fs::read_to_string(journal.with_file_name("snapshot.fault")).ok()?;
    text.split_whitespace().next().map(str::to_string)
}

/// The daemon dies here, as SIGKILL would have it: nothing after runs.
fn kill_self() {
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::journal::Draft;
    use crate::model::address::Address;
    use crate::model::event::EventBody;

    fn journal_of(dir: &Path, events: u64) -> (PathBuf, AgentTable, Resume) {
        let path = dir.join("events.jsonl");
        let (mut journal, _) = Journal::open(&path).unwrap();
        let drafts = (0..events)
            .map(|pid| Draft {
                agent: Some(Address::parse("/root/a").unwrap()),
                parent: Some(Address::root()),
                task: None,
                body: EventBody::DaemonStarted { pid: pid as u32 },
            })
            .collect();
        journal.append(drafts).unwrap();
        let mut table = AgentTable::default();
        table.last_id = 41;
        table.daily.insert("2026-12-01".into(), DailySpend { tokens: 7, cost: 0.5, ..DailySpend::default() });
        (path, table, Resume { seq: journal.last_seq(), len: journal.durable_len() })
    }

    #[test]
    fn a_snapshot_round_trips_and_names_where_the_journal_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, table, resume) = journal_of(dir.path(), 5);
        write(&journal, &table, resume, 0).unwrap();
        let (back, at) = load(&journal, 0).expect("the snapshot is used");
        assert_eq!(at, resume);
        assert_eq!((back.last_id, back.daily), (41, table.daily));
        assert!(!temporary(&path_for(&journal)).exists());
    }

    #[test]
    fn a_snapshot_the_journal_does_not_hold_is_set_aside_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, table, resume) = journal_of(dir.path(), 5);
        // Past the journal's end, and at a length that is not where that seq ends.
        for wrong in [Resume { seq: 6, len: resume.len + 10 }, Resume { seq: 4, len: resume.len }] {
            write(&journal, &table, wrong, 0).unwrap();
            assert!(load(&journal, 0).is_none(), "{wrong:?} was used");
            assert!(!path_for(&journal).exists(), "{wrong:?} stays in place");
        }
        let aside = std::fs::read_dir(dir.path()).unwrap().flatten();
        assert_eq!(aside.filter(|e| e.file_name().to_string_lossy().contains(".unused-")).count(), 2);
    }

    #[test]
    fn a_snapshot_naming_more_of_done_jsonl_than_it_holds_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, table, resume) = journal_of(dir.path(), 3);
        write(&journal, &table, resume, 100).unwrap();
        assert!(load(&journal, 99).is_none(), "a done.jsonl cut short was trusted");
        assert!(!path_for(&journal).exists());
        write(&journal, &table, resume, 100).unwrap();
        assert!(load(&journal, 100).is_some());
    }

    #[test]
    fn a_snapshot_cut_short_is_not_used_and_a_leftover_temporary_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, table, resume) = journal_of(dir.path(), 3);
        write(&journal, &table, resume, 0).unwrap();
        let path = path_for(&journal);
        // The header promises an agent the file does not hold.
        let text = std::fs::read_to_string(&path).unwrap().replace("\"agents\":0", "\"agents\":1");
        std::fs::write(&path, text).unwrap();
        std::fs::write(temporary(&path), "half a snap").unwrap();
        assert!(load(&journal, 0).is_none());
        assert!(!temporary(&path).exists());
    }
}
