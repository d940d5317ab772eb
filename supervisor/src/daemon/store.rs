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
//! Never does: decide anything. It records what the daemon decided.

use std::path::Path;
use std::sync::{mpsc as std_mpsc, Arc, RwLock};

use tokio::sync::{oneshot, watch};

use crate::daemon::journal::{Draft, Journal};
use crate::model::address::Address;
use crate::model::error::{Error, Result};
use crate::model::event::Event;
use crate::model::lifecycle::{AgentRecord, AgentTable};

/// Most commits one write takes together.
const GROUP_COMMIT_MAX: usize = 512;

/// One commit waiting for the writer.
struct Commit {
    drafts: Vec<Draft>,
    reply: oneshot::Sender<Result<Vec<Event>>>,
}

pub(super) struct Store {
    writer: std_mpsc::Sender<Commit>,
    table: Arc<RwLock<AgentTable>>,
    seq: watch::Sender<u64>,
}

impl Store {
    /// Opens the journal, folds every event into a new table and starts
    /// the writer thread.
    pub(super) fn open(path: &Path) -> Result<Store> {
        let (journal, events) = Journal::open(path)?;
        let mut table = AgentTable::default();
        for event in &events {
            table.apply(event);
        }
        let table = Arc::new(RwLock::new(table));
        let seq = watch::Sender::new(journal.last_seq());
        let (writer, commits) = std_mpsc::channel();
        let (thread_table, thread_seq) = (table.clone(), seq.clone());
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| write_loop(journal, commits, &thread_table, &thread_seq));
                if std::panic::catch_unwind(run).is_err() {
                    // A critical error: nothing can be recorded any more, so
                    // nothing may be decided. The agents run on under their
                    // monitors; the next client starts a new daemon.
                    tracing::error!("the journal writer failed; the daemon exits");
                    std::process::exit(70);
                }
            })
            .map_err(|e| Error::other(format!("cannot start the journal writer: {e}")))?;
        Ok(Store { writer, table, seq })
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

    /// Lends the table to `f`.
    pub(super) fn read<T>(&self, f: impl FnOnce(&AgentTable) -> T) -> T {
        f(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn record(&self, address: &Address) -> Option<AgentRecord> {
        self.read(|table| table.agents.get(address).cloned())
    }

    /// The newest journaled seq; it changes after every commit.
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }
}

fn write_loop(
    mut journal: Journal,
    commits: std_mpsc::Receiver<Commit>,
    table: &RwLock<AgentTable>,
    seq: &watch::Sender<u64>,
) {
    while let Ok(first) = commits.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match commits.try_recv() {
                Ok(commit) => batch.push(commit),
                Err(_) => break,
            }
        }
        let sizes: Vec<usize> = batch.iter().map(|c| c.drafts.len()).collect();
        let (drafts, replies): (Vec<Vec<Draft>>, Vec<_>) = batch.into_iter().map(|c| (c.drafts, c.reply)).unzip();
        match journal.append(drafts.into_iter().flatten().collect()) {
            Ok(events) => {
                {
                    let mut table = table.write().unwrap_or_else(|e| e.into_inner());
                    for event in &events {
                        table.apply(event);
                    }
                }
                seq.send_replace(journal.last_seq());
                let mut events = events.into_iter();
                for (reply, size) in replies.into_iter().zip(sizes) {
                    let _ = reply.send(Ok(events.by_ref().take(size).collect()));
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
