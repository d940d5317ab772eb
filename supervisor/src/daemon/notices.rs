//! Notices upward: a child's completion, merge and progress notices for
//! its parent agent (see `model::notify` for what they say and when).
//!
//! A notice is journaled as `notice_sent` on the child (so `corral events
//! --agent /root/lead` shows a subtree's whole conversation) and waits in
//! the parent's messages, ordered with them; the parent's task delivers it
//! through the parent's own channel and journals `notice_delivered`. A
//! completion is journaled in the same commit as the child's exit, so no
//! parent can see a child ended without its notice waiting. Nothing is
//! sent to a parent that has ended or is being stopped, and each notice
//! has an id of the child's (`<task>-done`, `<task>-merge`,
//! `<task>-p<n>`), so none is sent twice.
//!
//! Never does: deliver (the parent's task does) or decide when a child
//! ends.

use std::path::Path;

use super::agent::Control;
use super::Daemon;
use crate::daemon::journal::Draft;
use crate::model::event::EventBody;
use crate::model::lifecycle::AgentRecord;
use crate::model::notify::{self, NoticeKind, Notify, Progress};

/// The parent a notice of `child` goes to: an agent that is alive and not
/// being stopped, when the child tells anything at all.
fn listening_parent(daemon: &Daemon, child: &AgentRecord, wants: impl Fn(Notify) -> bool) -> Option<AgentRecord> {
    if child.parent.is_root() || !child.notify.is_some_and(wants) {
        return None;
    }
    daemon.record(&child.parent).filter(|p| !p.state.is_terminal() && !p.stop_requested && !p.removed)
}

fn notice(child: &AgentRecord, parent: &AgentRecord, id: String, kind: NoticeKind, text: String) -> Draft {
    Draft {
        agent: Some(child.address.clone()),
        parent: Some(child.parent.clone()),
        task: Some(child.task_id.clone()),
        body: EventBody::NoticeSent { message_id: id, to: parent.address.to_string(), kind, text },
    }
}

/// The completion notice of a child that is ending with `exited` (applied
/// to a copy of its record to say how), to journal with the exit.
pub(super) fn completion(daemon: &Daemon, child: &AgentRecord, exited: &EventBody, log: &Path) -> Option<Draft> {
    let parent = listening_parent(daemon, child, Notify::on_completion)?;
    let id = format!("{}-done", child.task_id);
    if child.notices.contains(&id) {
        return None;
    }
    let mut ended = child.clone();
    ended.apply(&crate::model::event::Event {
        v: crate::model::event::EVENT_VERSION,
        seq: 0,
        ts: chrono::Utc::now(),
        agent: Some(child.address.clone()),
        parent: Some(child.parent.clone()),
        task: Some(child.task_id.clone()),
        body: exited.clone(),
    });
    let result = notify::result_text(&ended, || crate::sys::output::tail_lines(log, notify::RESULT_TAIL_LINES));
    let text = notify::completion(&ended, result.as_deref(), ended.runtime_secs(chrono::Utc::now()));
    Some(notice(child, &parent, id, NoticeKind::Completion, text))
}

/// After a child's merge settled: its merge notice, journaled, and the
/// parent told to deliver it.
pub(super) async fn merge_settled(daemon: &Daemon, child: &AgentRecord) {
    let Some(parent) = listening_parent(daemon, child, Notify::on_completion) else { return };
    let id = format!("{}-merge", child.task_id);
    if child.notices.contains(&id) {
        return;
    }
    let Some(text) = notify::merge(child) else { return };
    daemon.commit_logged(vec![notice(child, &parent, id, NoticeKind::Merge, text)]).await;
    deliver(daemon, &parent);
}

/// A running child's progress digest, when it asked for them and did
/// something since the last one.
pub(super) async fn progress(daemon: &Daemon, child: &AgentRecord, progress: &Progress) -> bool {
    if progress.is_empty() {
        return false;
    }
    let Some(parent) = listening_parent(daemon, child, |n| n == Notify::Progress) else { return false };
    let current = daemon.record(&child.address).unwrap_or_else(|| child.clone());
    let n = current.notices.iter().filter(|id| id.starts_with(&format!("{}-p", current.task_id))).count() + 1;
    let id = format!("{}-p{n}", current.task_id);
    let text = progress.digest(&current);
    if daemon.commit(vec![notice(&current, &parent, id, NoticeKind::Progress, text)]).await.is_err() {
        return false;
    }
    deliver(daemon, &parent);
    true
}

/// Tells the parent's task that a notice waits (it delivers as its CLI
/// can take it).
pub(super) fn deliver(daemon: &Daemon, parent: &AgentRecord) {
    let _ = daemon.agents.control(&parent.address, Control::Deliver);
}

/// True while a child of `parent` that reports to it has more to say:
/// running, or ended with its merge not settled. The parent's input stays
/// open meanwhile, so the notices can reach it.
pub(super) fn children_reporting(daemon: &Daemon, parent: &AgentRecord) -> bool {
    daemon.store.read(|table| {
        table.agents.values().any(|a| {
            a.parent == parent.address && !a.removed && a.notify.is_some_and(Notify::on_completion) && !a.is_done()
        })
    })
}
