//! Stop, wait and gc: requests that act on many agents at once.

use std::sync::Arc;
use std::time::Duration;

use super::agent::Control;
use super::budgets::DEFAULT_GRACE_SECS;
use super::{blocking, Daemon};
use crate::git::worktree;
use crate::model::address::Address;
use crate::model::duration::checked_secs;
use crate::model::error::Result;
use crate::model::event::EventBody;
use crate::model::lifecycle::{AgentRecord, AgentState, Entry};
use crate::wire::protocol::{GcEntry, Response};

/// The most rounds a stop takes (see [`stop`]): each catches what was
/// spawned below the top during the last one's grace, and spawning below
/// a stopping agent is refused, so a second round finds nothing new.
const STOP_ROUNDS: usize = 8;

/// Stops an agent and its subtree; `/root` stops every agent. Each agent
/// gets `grace_secs` if given, else its own grace (`spawn --grace`, or
/// `[supervisor] grace` when it was spawned), else the default.
pub(super) async fn stop(daemon: &Arc<Daemon>, address: &str, grace_secs: Option<f64>) -> Result<Response> {
    let grace_secs = grace_secs.map(|g| checked_secs("--grace", g).map(|d| d.as_secs_f64())).transpose()?;
    let top = Address::parse(address)?;
    let top_record = if top.is_root() { None } else { Some(daemon.find(address)?) };
    let grace_of = |agent: &AgentRecord| grace_secs.or(agent.grace_secs).unwrap_or(DEFAULT_GRACE_SECS);
    // Rounds, until the subtree holds nothing live that this stop did not
    // already stop: an agent spawned below the top while the first ones
    // had their grace (a spawn that passed its check just before the stop
    // was journaled) is stopped too.
    let mut stopped = std::collections::HashSet::new();
    for _round in 0..STOP_ROUNDS {
        let targets: Vec<AgentRecord> = daemon.store.read(|table| {
            let scope: Vec<&AgentRecord> = match &top_record {
                Some(record) => table.subtree(&record.address),
                None => table.agents.values().collect(),
            };
            scope.into_iter().filter(|a| !a.state.is_terminal() && !stopped.contains(&a.address)).cloned().collect()
        });
        if targets.is_empty() {
            break;
        }
        let drafts = targets
            .iter()
            .filter(|a| !a.stop_requested)
            .map(|a| daemon.draft(a, EventBody::StopRequested { grace_secs: grace_of(a), budget: None }))
            .collect();
        daemon.commit(drafts).await?;
        for agent in &targets {
            if agent.state == AgentState::Pending {
                // Nothing runs yet: it ends here.
                let body = EventBody::Exited {
                    state: AgentState::Stopped,
                    code: None,
                    signal: None,
                    reason: Some("stopped before it started".into()),
                };
                daemon.commit(vec![daemon.draft(agent, body)]).await?;
                continue;
            }
            // An agent with no task ended meanwhile: nothing to stop.
            let _ = daemon.agents.control(&agent.address, Control::Stop { grace_secs: grace_of(agent) });
        }
        let round: Vec<Address> = targets.iter().map(|a| a.address.clone()).collect();
        // The monitor escalates to SIGKILL after the grace; allow for a slow box.
        let longest = targets.iter().map(grace_of).fold(0.0, f64::max);
        let limit = Duration::from_secs_f64(longest) + Duration::from_secs(30);
        wait_for(daemon, &round, Some(limit)).await;
        stopped.extend(round);
    }
    // The agents it stopped (and the one asked for), not the whole history.
    let top_address = top_record.as_ref().map(|r| &r.address);
    let mut all: Vec<AgentRecord> = daemon.store.read(|table| {
        let wanted = |a: &&AgentRecord| stopped.contains(&a.address) || Some(&a.address) == top_address;
        match top_address {
            Some(top) => table.subtree(top).into_iter().filter(wanted).cloned().collect(),
            None => table.agents.values().filter(wanted).cloned().collect(),
        }
    });
    // A top that was done already may be put away (its subtree is done).
    if let Some(top) = top_address.filter(|top| !all.iter().any(|a| &a.address == *top)) {
        all.splice(0..0, daemon.record(top));
    }
    Ok(Response::Stopped { agents: all })
}

pub(super) async fn wait(daemon: &Arc<Daemon>, addresses: &[String], timeout_secs: Option<f64>) -> Result<Response> {
    let mut wanted = Vec::new();
    for text in addresses {
        wanted.push(daemon.find(text)?.address);
    }
    let timeout = timeout_secs.map(|t| checked_secs("--timeout", t)).transpose()?;
    let (agents, timed_out) = wait_for(daemon, &wanted, timeout).await;
    Ok(Response::Waited { agents, timed_out })
}

/// Waits until every address has ended, or the timeout passes.
pub(super) async fn wait_for(
    daemon: &Arc<Daemon>,
    addresses: &[Address],
    timeout: Option<Duration>,
) -> (Vec<AgentRecord>, bool) {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seq = daemon.store.subscribe();
    loop {
        seq.borrow_and_update();
        let records: Vec<AgentRecord> = addresses.iter().filter_map(|a| daemon.record(a)).collect();
        if records.iter().all(AgentRecord::is_done) {
            return (records, false);
        }
        let changed = seq.changed();
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return (records, true);
                }
            }
            None => {
                let _ = changed.await;
            }
        }
    }
}

/// Removes the worktrees of agents that are done (their merge settled),
/// and their branches when the target already holds every commit. Work
/// that is not on the target (uncommitted files, unmerged or squashed
/// commits) is kept unless `force`, and then named. With `older_than_secs`,
/// only agents that ended at least that long ago (`gc --older-than 7d`
/// after nightly runs).
pub(super) async fn gc(daemon: &Arc<Daemon>, force: bool, older_than_secs: Option<f64>) -> Result<Response> {
    let older_than = older_than_secs.map(|t| checked_secs("--older-than", t)).transpose()?;
    let cutoff = older_than.and_then(|age| chrono::Duration::from_std(age).ok()).map(|age| chrono::Utc::now() - age);
    let old_enough = |a: &Entry| match cutoff {
        Some(cutoff) => a.ended_at().is_some_and(|ended| ended <= cutoff),
        None => true,
    };
    // Addresses, not records: a long history's put-away records are read
    // one at a time, never all at once.
    let candidates: Vec<Address> = daemon.store.read(|table| {
        table.entries().filter(|a| a.is_done() && !a.removed() && old_enough(a)).map(|a| a.address().clone()).collect()
    });
    let (mut removed, mut kept) = (Vec::new(), Vec::new());
    let _git = daemon.git.lock().await;
    for address in candidates {
        let Some(agent) = daemon.record(&address) else { continue };
        let repo = daemon.state.repo_root.clone();
        let (path, branch, target) = (agent.worktree.clone(), agent.branch.clone(), agent.merge.target.clone());
        let entry = |why: String, deleted_branch: Option<String>| GcEntry {
            address: agent.address.to_string(),
            worktree: agent.worktree.clone(),
            why,
            deleted_branch,
        };
        let outcome = blocking(move || {
            worktree::remove(&repo, &path, force)?;
            let merged = match &target {
                Some(target) => crate::git::merge::is_merged(&repo, &branch, target).unwrap_or(false),
                None => false,
            };
            let exists = worktree::branch_tip(&repo, &branch).is_some();
            if exists && (merged || force) {
                worktree::delete_branch(&repo, &branch)?;
                return Ok((true, merged));
            }
            Ok((false, merged))
        })
        .await;
        match outcome {
            Ok((deleted, merged)) => {
                let deleted_branch = deleted.then(|| agent.branch.clone());
                let body =
                    EventBody::Removed { worktree: agent.worktree.clone(), deleted_branch: deleted_branch.clone() };
                daemon.commit(vec![daemon.draft(&agent, body)]).await?;
                let why = match (deleted, merged) {
                    (true, true) => format!("{}; branch {} merged and deleted", agent.state.as_str(), agent.branch),
                    (true, false) => {
                        format!("{}; UNMERGED branch {} deleted (--force)", agent.state.as_str(), agent.branch)
                    }
                    (false, _) => format!(
                        "{}; branch {} kept (not all of it is on its target)",
                        agent.state.as_str(),
                        agent.branch
                    ),
                };
                removed.push(entry(why, deleted_branch));
            }
            Err(err) => kept.push(entry(err.message, None)),
        }
    }
    Ok(Response::Gc { removed, kept })
}
