//! Adoption: on start, the daemon reconnects to every agent the journal
//! says is starting or running. A live agent is reconnected through the
//! runtime (same pid, output caught up from its log); a finished one is
//! settled from its exit record; a vanished one is marked Lost; one whose
//! start the old daemon never finished gives its worktree back.

use std::sync::Arc;

use super::agent::{charge_unrecorded, exited_body, flush_output, journal_untold_calls, supervise};
use super::reader::{agent_env, OutputReader};
use super::{blocking, Daemon};
use crate::git::worktree;
use crate::model::event::EventBody;
use crate::model::lifecycle::{AgentRecord, AgentState};

/// Reconnects to every agent the journal says is starting or running.
pub(super) async fn adopt_all(daemon: &Arc<Daemon>) {
    // Pending agents have no monitor yet: the dispatcher starts them.
    let live: Vec<AgentRecord> = daemon.store.read(|table| {
        table.agents.values().filter(|a| !a.state.is_terminal() && a.state != AgentState::Pending).cloned().collect()
    });
    for record in live {
        adopt(daemon, record).await;
    }
}

async fn adopt(daemon: &Arc<Daemon>, record: AgentRecord) {
    let agent_dir = daemon.state.agent(record.id);
    if let Some((link, pid, monitor_pid)) = daemon.runtime.connect(&agent_dir).await {
        daemon.commit_logged(vec![daemon.draft(&record, EventBody::Adopted { pid, monitor_pid })]).await;
        journal_started_follow_ups(daemon, &record.address, &agent_dir).await;
        let record = daemon.record(&record.address).unwrap_or(record);
        supervise(daemon, record, Some(link));
        return;
    }
    // No live monitor: the exit record tells how the agent ended, and its
    // calls file what it spent that no daemon heard.
    journal_untold_calls(daemon, &record.address, &agent_dir).await;
    journal_started_follow_ups(daemon, &record.address, &agent_dir).await;
    let record = daemon.record(&record.address).unwrap_or(record);
    if let Some(exit) = daemon.runtime.exit_record(&agent_dir) {
        let mut reader = OutputReader::resume(&record, agent_dir.log(), agent_env(&agent_dir.spec()));
        flush_output(daemon, &record, &mut reader, true, &mut crate::model::notify::Progress::default()).await;
        if record.state == AgentState::Starting && exit.error.is_some() {
            give_up_start(daemon, &record, "it could not be started").await;
            return;
        }
        let record = daemon.record(&record.address).unwrap_or(record);
        let body = exited_body(&exit, &record);
        daemon.commit_logged(vec![daemon.draft(&record, body)]).await;
        return;
    }
    if record.state == AgentState::Starting {
        // The daemon died between making the worktree and starting the agent.
        give_up_start(daemon, &record, "the daemon stopped before the agent started").await;
        return;
    }
    // The monitor died, maybe with calls upstream that no record tells.
    let held = super::budgets::settle_call(daemon, &record.address, None);
    charge_unrecorded(daemon, &record.address, &agent_dir, held).await;
    let record = daemon.record(&record.address).unwrap_or(record);
    let body = EventBody::Exited {
        state: AgentState::Lost,
        code: None,
        signal: None,
        reason: Some("its monitor vanished without an exit record".into()),
    };
    daemon.commit_logged(vec![daemon.draft(&record, body)]).await;
}

/// A start the old daemon never finished. A fresh spawn's worktree holds
/// nothing of the agent's yet: it goes, and the name is free again. An
/// agent with runs behind it (an assigned task that never started) keeps
/// its worktree and branch, which hold its earlier tasks' work: that run
/// fails instead.
async fn give_up_start(daemon: &Arc<Daemon>, record: &AgentRecord, why: &str) {
    if record.runs > 0 {
        let body = EventBody::Exited {
            state: AgentState::Failed,
            code: None,
            signal: None,
            reason: Some(format!("its task {} did not start: {why}", record.task_id)),
        };
        daemon.commit_logged(vec![daemon.draft(record, body)]).await;
        return;
    }
    discard_unstarted(daemon, record, why).await;
}

async fn discard_unstarted(daemon: &Arc<Daemon>, record: &AgentRecord, why: &str) {
    let _git = daemon.git.lock().await;
    let (repo, branch, path) = (daemon.state.repo_root.clone(), record.branch.clone(), record.worktree.clone());
    let _ = blocking(move || worktree::discard(&repo, &branch, &path)).await;
    daemon.commit_logged(vec![daemon.draft(record, EventBody::SpawnFailed { reason: why.into() })]).await;
}

/// The messages whose follow-up runs started while no daemon listened
/// (their monitor lists them in the agent's folder): journaled delivered,
/// each once, so none stays pending for ever or is handed over again.
async fn journal_started_follow_ups(
    daemon: &Arc<Daemon>,
    address: &crate::model::address::Address,
    agent_dir: &crate::sys::paths::AgentDir,
) {
    let Ok(text) = std::fs::read_to_string(crate::monitor::started_follow_ups_file(agent_dir)) else { return };
    let Some(record) = daemon.record(address) else { return };
    let drafts: Vec<_> = record
        .pending_messages
        .iter()
        .filter(|m| text.lines().any(|tag| tag == m.message_id))
        .map(|m| daemon.draft(&record, super::agent::delivered(&record, m.message_id.clone())))
        .collect();
    if !drafts.is_empty() {
        daemon.commit_logged(drafts).await;
    }
}
