//! The store: the journal's single writer and the agent table it folds.
//!
//! Owns: the journal file (through [`Journal`]), the agent table and the
//! newest seq. One thread, the writer, is the only code that appends to
//! the journal and the only code that writes the table: it takes the
//! commits queued since its last write, appends them all with one fsync
//! (group commit), folds the new events into the table, publishes the seq,
//! and only then answers each commit. So the table is always the fold of
//! what is on disk, and never runs ahead of it: a commit that fails (a
//! full disk) changes neither.
//!
//! Everyone else reads the table through [`Store::read`], which lends it
//! to a closure: no guard can be held across an `.await` or while another
//! lock is taken.
//!
//! While the journal cannot be written (a full disk, a read-only
//! filesystem) every commit is refused with the cause and nothing moves;
//! the writer tries again by itself every second, and the first append
//! that goes through is preceded by a `journal_resumed` event that says
//! since when and how many appends failed. A damaged journal repaired on
//! open is said in a `journal_repaired` event.
//!
//! History stays cheap: the writer snapshots the table (`snapshot`) once
//! enough events were written since the last snapshot, so opening folds
//! the snapshot and only the journal after it; the journal itself is
//! never cut.
//!
//! Memory follows live agents: the writer puts done agents away (their
//! whole records written to `done.jsonl`, see `archive`; a summary stays
//! in the table) a batch at a time, in the fold on open as at run time,
//! and brings a record back before it applies an event of that agent (a
//! `gc`, an `assign`, a merge of an old agent). [`Store::record`] reads a
//! put-away record from the file, so callers never see the difference.
//!
//! Never does: decide anything. It records what the daemon decided.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::daemon::archive::Archive;
use crate::daemon::journal::{Draft, Journal, Resume};
use crate::daemon::snapshot;
use crate::model::address::Address;
use crate::model::error::{Error, Result};
use crate::model::event::{Event, EventBody};
use crate::model::lifecycle::{AgentRecord, AgentTable, Entry, Spot};

/// Most commits one write takes together.
const GROUP_COMMIT_MAX: usize = 512;

/// Events written between two snapshots, at least. A snapshot costs about
/// as much as the table is large, so with many agents they are further
/// apart: at least `SNAPSHOT_PER_AGENT` events an agent, which keeps the
/// cost of snapshots per event the same whatever the history, and what a
/// start folds after the snapshot at most this many events.
const SNAPSHOT_EVERY: u64 = 20_000;
const SNAPSHOT_PER_AGENT: u64 = 1;

/// Agents touched since the last putting away, at least, before the writer
/// looks for done ones to put away: at most about this many done agents'
/// whole records are held in memory.
const PUT_AWAY_EVERY: usize = 1_024;

/// How often a writer that cannot write tries again by itself.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What readers may read: the newest seq, and the length of the journal's
/// whole, durable lines (a reader reads no further).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Durable {
    pub seq: u64,
    pub len: u64,
}

/// One commit waiting for the writer.
struct Commit {
    drafts: Vec<Draft>,
    reply: oneshot::Sender<Result<Vec<Event>>>,
}

pub(super) struct Store {
    writer: std_mpsc::Sender<Commit>,
    table: Arc<RwLock<AgentTable>>,
    archive: Arc<Archive>,
    durable: watch::Sender<Durable>,
    /// Output events left out while the journal could not be written, to
    /// be counted in the next `journal_resumed`.
    dropped_output: Arc<AtomicU64>,
}

impl Store {
    /// Opens the journal, folds it into a new table (from the snapshot,
    /// when there is one the journal holds, then the events after it) and
    /// starts the writer thread.
    pub(super) fn open(path: &Path) -> Result<Store> {
        let archive = Archive::open(path)
            .map_err(|e| Error::other(format!("cannot open {}: {e}", Archive::path_for(path).display())))?;
        let archive = Arc::new(archive);
        let (mut table, resume) = match snapshot::load(path, archive.len()) {
            Some((table, resume)) => (table, Some(resume)),
            None => (AgentTable::default(), None),
        };
        let mut keeper = Keeper { archive: archive.clone(), touched: BTreeSet::new() };
        let mut journal = Journal::open_after(path, resume, |event| {
            keeper.apply(&mut table, &event);
            keeper.put_away_if_due(&mut table);
        })?;
        // Whatever the snapshot or the fold left held that is done goes now.
        keeper.touched.extend(table.agents.keys().cloned());
        keeper.put_away(&mut table);
        let snapshot_seq = resume.map_or(0, |r| r.seq);
        let table = Arc::new(RwLock::new(table));
        let durable = watch::Sender::new(Durable { seq: journal.last_seq(), len: journal.durable_len() });
        let dropped_output = Arc::new(AtomicU64::new(0));
        let (writer, commits) = std_mpsc::channel();
        // A damaged journal repaired on open is said first of all.
        let first = journal
            .take_repair()
            .map(|r| Draft {
                agent: None,
                parent: None,
                task: None,
                body: EventBody::JournalRepaired {
                    line: r.line,
                    reason: r.reason,
                    moved_to: r.moved_to,
                    bytes: r.bytes,
                },
            })
            .into_iter()
            .collect();
        let mut writer_state = Writer {
            journal,
            commits,
            table: table.clone(),
            durable: durable.clone(),
            dropped_output: dropped_output.clone(),
            fault: None,
            first,
            snapshot_seq,
            keeper,
        };
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer_state.run());
                if std::panic::catch_unwind(run).is_err() {
                    // A critical error: nothing can be recorded any more, so
                    // nothing may be decided. The agents run on under their
                    // monitors; the next client starts a new daemon.
                    tracing::error!("the journal writer failed; the daemon exits");
                    std::process::exit(70);
                }
            })
            .map_err(|e| Error::other(format!("cannot start the journal writer: {e}")))?;
        Ok(Store { writer, table, archive, durable, dropped_output })
    }

    /// Journals the drafts (fsynced), folds them into the table, wakes
    /// followers; returns the events once all of that is done. The one way
    /// state changes.
    pub(super) async fn commit(&self, drafts: Vec<Draft>) -> Result<Vec<Event>> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::other("the journal writer has stopped");
        self.writer.send(Commit { drafts, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Returns once the writer has done everything asked of it before,
    /// a snapshot it is writing included: a daemon that stops settles
    /// first, so a short-lived daemon still leaves its snapshot behind.
    pub(super) async fn settle(&self) {
        let (reply, answer) = oneshot::channel();
        if self.writer.send(Commit { drafts: Vec::new(), reply }).is_ok() {
            let _ = answer.await;
        }
    }

    /// Lends the table to `f`.
    pub(super) fn read<T>(&self, f: impl FnOnce(&AgentTable) -> T) -> T {
        f(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The agent's whole record, read back from `done.jsonl` when it was
    /// put away.
    pub(super) fn record(&self, address: &Address) -> Option<AgentRecord> {
        let spot = self.read(|table| match table.entry(address)? {
            Entry::Held(record) => Some(Err(record.clone())),
            Entry::Away(_, done) => Some(Ok(done.spot)),
        })?;
        match spot {
            Err(record) => Some(record),
            Ok(spot) => self.load(address, spot),
        }
    }

    /// The put-away record at `spot` (a spot stays good: see `archive`).
    pub(super) fn load(&self, address: &Address, spot: Spot) -> Option<AgentRecord> {
        match self.archive.read(spot) {
            Ok(record) => Some(record),
            Err(err) => {
                tracing::error!("cannot read back the record of {address}: {err}");
                None
            }
        }
    }

    /// The newest journaled seq and durable length; it changes after
    /// every commit.
    pub(super) fn subscribe(&self) -> watch::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// Counts output events that could not be journaled (said in the next
    /// `journal_resumed`).
    pub(super) fn count_dropped_output(&self, events: u64) {
        self.dropped_output.fetch_add(events, Ordering::Relaxed);
    }
}

/// Since when appends fail, with the first error and how many failed.
struct Fault {
    since: chrono::DateTime<chrono::Utc>,
    error: String,
    failed: u64,
}

/// The writer thread's state.
struct Writer {
    journal: Journal,
    commits: std_mpsc::Receiver<Commit>,
    table: Arc<RwLock<AgentTable>>,
    durable: watch::Sender<Durable>,
    dropped_output: Arc<AtomicU64>,
    fault: Option<Fault>,
    /// Written before anything else (a repair found on open).
    first: Vec<Draft>,
    /// The seq of the last snapshot (0: none yet).
    snapshot_seq: u64,
    keeper: Keeper,
}

/// Puts done agents away and brings them back: the writer's (and the
/// fold's on open), never anyone else's.
struct Keeper {
    archive: Arc<Archive>,
    /// Agents with events since the last putting away.
    touched: BTreeSet<Address>,
}

impl Keeper {
    /// Applies `event`, bringing back first the records it needs.
    fn apply(&mut self, table: &mut AgentTable, event: &Event) {
        for (address, spot) in table.put_away_for(event) {
            match self.archive.read(spot) {
                Ok(record) => table.bring_back(record),
                // Not misread: its event is left out of the fold (said).
                Err(err) => tracing::error!("cannot bring back the record of {address}: {err}"),
            }
        }
        table.apply(event);
        if let Some(agent) = &event.agent {
            if !self.touched.contains(agent) {
                self.touched.insert(agent.clone());
            }
        }
    }

    fn put_away_if_due(&mut self, table: &mut AgentTable) {
        if self.touched.len() >= PUT_AWAY_EVERY {
            self.put_away(table);
        }
    }

    /// Puts away every touched agent (and ancestor of one) that may be.
    /// One that cannot be written stays held: nothing is lost, only memory.
    fn put_away(&mut self, table: &mut AgentTable) {
        let touched = std::mem::take(&mut self.touched);
        let mut candidates: BTreeSet<Address> = BTreeSet::new();
        for address in touched {
            for at in std::iter::successors(Some(address), Address::parent) {
                if at.is_root() || !candidates.insert(at) {
                    break;
                }
            }
        }
        let records: Vec<&AgentRecord> =
            candidates.iter().filter(|a| table.can_put_away(a)).filter_map(|a| table.agents.get(a)).collect();
        if records.is_empty() {
            return;
        }
        match self.archive.append(&records) {
            Ok(spots) => {
                let addresses: Vec<Address> = records.iter().map(|r| r.address.clone()).collect();
                for (address, spot) in addresses.iter().zip(spots) {
                    table.put_away(address, spot);
                }
            }
            Err(err) => tracing::warn!("cannot put away {} done agents' records: {err}", records.len()),
        }
    }
}

impl Writer {
    fn run(&mut self) {
        loop {
            let first = if self.fault.is_some() {
                match self.commits.recv_timeout(RETRY_EVERY) {
                    Ok(commit) => Some(commit),
                    // Nobody asked for anything: try again on our own.
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else if !self.first.is_empty() {
                None
            } else {
                match self.commits.recv() {
                    Ok(commit) => Some(commit),
                    Err(_) => return,
                }
            };
            let mut batch: Vec<Commit> = first.into_iter().collect();
            while batch.len() < GROUP_COMMIT_MAX {
                match self.commits.try_recv() {
                    Ok(commit) => batch.push(commit),
                    Err(_) => break,
                }
            }
            self.write(batch);
        }
    }

    /// Writes a snapshot of the table when enough was journaled since the
    /// last one. One that cannot be written is said and tried again after
    /// as many events more: the journal still holds everything.
    fn snapshot_if_due(&mut self) {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        let due = SNAPSHOT_EVERY.max(SNAPSHOT_PER_AGENT * table.len() as u64);
        if self.journal.last_seq() - self.snapshot_seq < due {
            return;
        }
        let resume = Resume { seq: self.journal.last_seq(), len: self.journal.durable_len() };
        // The records it names are durable before it is.
        let written = self
            .keeper
            .archive
            .sync()
            .and_then(|()| snapshot::write(self.journal.path(), &table, resume, self.keeper.archive.len()));
        if let Err(err) = written {
            tracing::warn!(
                "cannot write a snapshot of the agent table beside {}: {err}",
                self.journal.path().display()
            );
        }
        self.snapshot_seq = resume.seq;
    }

    /// Appends the batch (after what must come first), folds it, publishes
    /// it, answers each commit.
    fn write(&mut self, batch: Vec<Commit>) {
        let mut lead = std::mem::take(&mut self.first);
        if let Some(fault) = &self.fault {
            let dropped_output = self.dropped_output.load(Ordering::Relaxed);
            let body = EventBody::JournalResumed {
                since: fault.since,
                error: fault.error.clone(),
                failed: fault.failed,
                dropped_output,
            };
            lead.push(Draft { agent: None, parent: None, task: None, body });
        }
        let lead_len = lead.len();
        let sizes: Vec<usize> = batch.iter().map(|c| c.drafts.len()).collect();
        let (drafts, replies): (Vec<Vec<Draft>>, Vec<_>) = batch.into_iter().map(|c| (c.drafts, c.reply)).unzip();
        let all: Vec<Draft> = lead.into_iter().chain(drafts.into_iter().flatten()).collect();
        if all.is_empty() {
            // Only `settle`s: everything before them is done.
            for reply in replies {
                let _ = reply.send(Ok(Vec::new()));
            }
            return;
        }
        // Drafts are moved into the append; a failed append needs the lead
        // again, so keep what it takes to rebuild it.
        let repair_lead: Vec<EventBody> = all.iter().take(lead_len).map(|d| d.body.clone()).collect();
        match self.journal.append(all) {
            Ok(events) => {
                if self.fault.take().is_some() {
                    self.dropped_output.store(0, Ordering::Relaxed);
                    tracing::info!("the journal can be written again");
                }
                {
                    let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                    for event in &events {
                        self.keeper.apply(&mut table, event);
                    }
                }
                self.durable.send_replace(Durable { seq: self.journal.last_seq(), len: self.journal.durable_len() });
                let mut events = events.into_iter().skip(lead_len);
                for (reply, size) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(events.by_ref().take(size).collect()));
                }
                // After the answers: putting away and a snapshot delay the
                // next commits, never these.
                if self.keeper.touched.len() >= PUT_AWAY_EVERY {
                    let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
                    self.keeper.put_away(&mut table);
                }
                self.snapshot_if_due();
            }
            Err(err) => {
                // A repair found on open is written once the disk allows.
                self.first = repair_lead
                    .into_iter()
                    .filter(|b| matches!(b, EventBody::JournalRepaired { .. }))
                    .map(|body| Draft { agent: None, parent: None, task: None, body })
                    .collect();
                match &mut self.fault {
                    Some(fault) => fault.failed += 1,
                    None => {
                        tracing::error!("{err}");
                        self.fault = Some(Fault { since: chrono::Utc::now(), error: err.message.clone(), failed: 1 });
                    }
                }
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
