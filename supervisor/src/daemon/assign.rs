//! `corral assign`: an idle agent's next task, or a task queued for a busy one.

use super::*;

/// `corral assign`: an idle (ended) agent gets its next task in the same
/// worktree, continuing its CLI's session where the CLI can; a busy one
/// only with `queue`.
pub(super) async fn assign(inner: &Arc<Inner>, address: &str, task: String, queue: bool) -> Result<Response> {
    if Address::parse(address)?.is_root() {
        return Err(Error::new(
            ErrorKind::Refused,
            "/root is the caller (a person, a script or the orchestrating agent), not an agent: assign tasks to the agents below it",
        ));
    }
    let record = inner.find(address)?;
    if task.trim().is_empty() {
        return Err(Error::other("the task is empty: `corral assign ADDRESS \"what to do\"`"));
    }
    let task_id = {
        let mut reserved = inner.reserved.lock().unwrap();
        reserved.1 += 1;
        format!("t-{}", reserved.1 - 1)
    };
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
        inner.commit(vec![inner.draft(&record, body)]).await?;
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
        start_assigned(inner, &record, task_id, task).await?;
    }
    let agent = inner.record(&record.address).unwrap_or(record);
    Ok(Response::Agent { agent: Box::new(agent) })
}

/// Starts an ended agent's next run with `task` in its worktree.
pub(super) async fn start_assigned(
    inner: &Arc<Inner>,
    record: &AgentRecord,
    task_id: String,
    task: String,
) -> Result<()> {
    let agent_dir = inner.state.agent(record.id);
    let mut spec: MonitorSpec = std::fs::read(agent_dir.spec())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| Error::other(format!("cannot read {}", agent_dir.spec().display())))?;
    let (command, first_input) =
        corral_harness::launch::next_task(&record.harness, &record.command, record.session_id.as_deref(), &task);
    spec.command = command;
    if first_input.is_some() {
        spec.first_input = first_input;
    }
    spec.env.insert("CORRAL_TASK".into(), task.clone());
    spec.env.insert("CORRAL_TASK_ID".into(), task_id.clone());
    let bytes = serde_json::to_vec_pretty(&spec).expect("spec serializes");
    std::fs::write(agent_dir.spec(), bytes).map_err(|e| Error::io("cannot write", &agent_dir.spec(), e))?;
    // The previous run's exit record stays, under its task's name.
    let _ = std::fs::rename(agent_dir.exit(), agent_dir.dir.join(format!("exit-{}.json", record.task_id)));
    let assigned = Draft {
        agent: Some(record.address.clone()),
        parent: Some(record.parent.clone()),
        task: Some(task_id),
        body: EventBody::Assigned { task_text: task, command: spec.command.clone() },
    };
    inner.commit(vec![assigned]).await?;
    let record = inner.record(&record.address).expect("assigned");
    let _slots = inner.slots.lock().await;
    if !slot_free(inner) {
        inner.commit(vec![inner.draft(&record, EventBody::Queued {})]).await?;
        return Ok(());
    }
    match start_monitor(inner, &agent_dir, &record).await {
        Ok(launched) => {
            let (pid, monitor_pid) = launched.pids();
            inner.commit(vec![inner.draft(&record, EventBody::Started { pid, monitor_pid })]).await?;
            let record = inner.record(&record.address).unwrap_or(record);
            start_watcher(inner, record, launched.stream());
            Ok(())
        }
        Err(err) => {
            let body = EventBody::Exited {
                state: AgentState::Failed,
                code: None,
                signal: None,
                reason: Some(format!("could not be started: {}", err.message)),
            };
            inner.commit(vec![inner.draft(&record, body)]).await?;
            Err(err)
        }
    }
}
