//! `corral assign`: an idle agent's next task, or a task queued for a busy one.

use std::sync::Arc;

use super::start::{self, Start};
use super::Daemon;
use crate::daemon::journal::Draft;
use crate::model::address::Address;
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::AgentRecord;
use crate::wire::monitor::MonitorSpec;
use crate::wire::protocol::Response;

/// How long the next task waits for the last run's monitor to be gone (it
/// lingers up to 2 s for whoever still reads it).
const MONITOR_GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `corral assign`: an idle (ended) agent gets its next task in the same
/// worktree, continuing its CLI's session where the CLI can; a busy one
/// only with `queue`.
pub(super) async fn assign(daemon: &Arc<Daemon>, address: &str, task: String, queue: bool) -> Result<Response> {
    if Address::parse(address)?.is_root() {
        return Err(Error::new(
            ErrorKind::Refused,
            "/root is the caller (a person, a script or the orchestrating agent), not an agent: assign tasks to the agents below it",
        ));
    }
    let record = daemon.find(address)?;
    if task.trim().is_empty() {
        return Err(Error::other("the task is empty: `corral assign ADDRESS \"what to do\"`"));
    }
    // A task is spend like a spawn: none once the day's budget is gone.
    super::budgets::refuse_if_day_spent(daemon)?;
    let task_id = format!("t-{}", daemon.next_id());
    if !record.state.is_terminal() {
        if !queue {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "{} is busy ({}); `corral assign --queue` gives it the task when it finishes",
                    record.address,
                    record.state.as_str()
                ),
            ));
        }
        let body = EventBody::TaskQueued { task_id, task_text: task };
        daemon.commit(vec![daemon.draft(&record, body)]).await?;
    } else {
        if record.removed {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{}'s worktree was removed by gc; spawn a new agent", record.address),
            ));
        }
        if let Some((kind, used, limit)) = record.exceeded {
            return Err(Error::new(
                ErrorKind::Refused,
                format!("{}'s budget is spent ({})", record.address, kind.describe(used, limit)),
            ));
        }
        start_assigned(daemon, &record, task_id, task).await?;
    }
    let agent = daemon.record(&record.address).unwrap_or(record);
    Ok(Response::Agent { agent: Box::new(agent) })
}

/// Starts an ended agent's next run with `task` in its worktree.
pub(super) async fn start_assigned(
    daemon: &Arc<Daemon>,
    record: &AgentRecord,
    task_id: String,
    task: String,
) -> Result<()> {
    let agent_dir = daemon.state.agent(record.id);
    // The last run's monitor tells its end before it has written its exit
    // record and let go of its socket: the next run waits for it to be
    // gone, so neither is taken for the new run's.
    if let Some(monitor) = record.monitor_pid {
        let deadline = tokio::time::Instant::now() + MONITOR_GONE_WAIT;
        while crate::sys::process::alive(monitor) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let mut spec: MonitorSpec = std::fs::read(agent_dir.spec())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| Error::other(format!("cannot read {}", agent_dir.spec().display())))?;
    let (command, first_input) = record.harness.next_task(&record.command, record.session_id.as_deref(), &task);
    spec.command = command;
    if first_input.is_some() {
        spec.first_input = first_input;
    }
    spec.env.insert("CORRAL_TASK".into(), task.clone());
    spec.env.insert("CORRAL_TASK_ID".into(), task_id.clone());
    let bytes = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    std::fs::write(agent_dir.spec(), bytes).map_err(|e| Error::io("cannot write", &agent_dir.spec(), e))?;
    // Every call of the last run was journaled before it ended.
    crate::monitor::put_away_run(&agent_dir, &record.task_id);
    let assigned = Draft {
        agent: Some(record.address.clone()),
        parent: Some(record.parent.clone()),
        task: Some(task_id),
        body: EventBody::Assigned { task_text: task, command: spec.command.clone() },
    };
    daemon.commit(vec![assigned]).await?;
    let record = daemon.record(&record.address).expect("assigned");
    match start::start_or_queue(daemon, &record).await {
        Ok(Start::Running { .. } | Start::Queued) => Ok(()),
        Err(err) => {
            daemon.commit(vec![daemon.draft(&record, start::could_not_start(&err))]).await?;
            Err(err)
        }
    }
}
