//! One task per live agent, driven by a [`Control`] enum: it owns the
//! agent's live side (the monitor link, the output reader and parser, the
//! probes of the current run, budget checks after usage, and the delivery
//! of messages in order) until the agent has ended, then settles it
//! (exit, a queued task, a freed slot, the merge).
//!
//! Never does: start a process (the runtime does) or write the table
//! (the store does).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::budgets::{enforce_budgets, price_usage, touch, DEFAULT_GRACE_SECS};
use super::probe_run::{next_probe_event, probe_body, ProbeRun};
use super::reader::{agent_env, OutputReader};
use super::start::Link;
use super::{assign, merges, notices, start, Daemon};
use crate::daemon::journal::Draft;
use crate::model::address::Address;
use crate::model::budget::BudgetKind;
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::{classify_exit, AgentRecord, AgentState};
use crate::model::notify::{self, Progress};
use crate::wire::monitor::{ExitRecord, MonitorCommand, MonitorMessage};
use corral_harness::launch::Delivery;

/// What the rest of the daemon asks of one agent's task. Sends go
/// through the task so that message ids and delivery order are decided in
/// one place, in order.
pub(super) enum Control {
    /// Stop the agent: SIGTERM to its group, this long, then SIGKILL.
    Stop { grace_secs: f64 },
    /// Journal a message for it and deliver it as its CLI can take it.
    Send { from: String, text: String, key: Option<String>, reply: oneshot::Sender<Result<String>> },
    /// A child's notice waits in its messages: deliver what it can take.
    Deliver,
    /// A child that reports to it was spawned: hold it open for the
    /// child's notices (`ack` once the monitor has been told).
    Child { ack: oneshot::Sender<()> },
    /// A `pause` budget over it is spent: freeze its processes.
    Pause,
    /// That budget was raised: let them run again.
    Resume,
}

/// The control channels of the agents' tasks, by address: one task per
/// live agent. The lock is held for a map operation only, never with
/// another lock.
#[derive(Default)]
pub(super) struct Agents(Mutex<HashMap<Address, mpsc::UnboundedSender<Control>>>);

impl Agents {
    /// Sends `control` to the agent's task; gives it back if the agent has
    /// no task (it is not live).
    pub(super) fn control(&self, address: &Address, control: Control) -> std::result::Result<(), Control> {
        let sender = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(address).cloned();
        match sender {
            Some(sender) => sender.send(control).map_err(|e| e.0),
            None => Err(control),
        }
    }

    fn insert(&self, address: &Address, sender: mpsc::UnboundedSender<Control>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(address.clone(), sender);
    }

    /// Forgets the task, unless a newer one (the agent's next task) took
    /// its place meanwhile.
    fn remove(&self, address: &Address, sender: &mpsc::UnboundedSender<Control>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(address).is_some_and(|current| current.same_channel(sender)) {
            map.remove(address);
        }
    }
}

/// Starts the task that owns one live agent until it has ended. With no
/// link (the agent already ended), it settles from the exit record.
pub(super) fn supervise(daemon: &Arc<Daemon>, record: AgentRecord, link: Option<Link>) {
    let (tx, rx) = mpsc::unbounded_channel();
    daemon.agents.insert(&record.address, tx.clone());
    if record.stop_requested {
        // A stop arrived while the agent was starting. One that already
        // ended it (it was pending when stopped) gets no grace: its record
        // is closed, and nothing of it is to run.
        let grace_secs = match record.state.is_terminal() {
            true => 0.0,
            false => record.grace_secs.unwrap_or(DEFAULT_GRACE_SECS),
        };
        let _ = tx.send(Control::Stop { grace_secs });
    }
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let address = record.address.clone();
        watch_monitor(&daemon, record, link, rx).await;
        daemon.agents.remove(&address, &tx);
    });
}

/// `corral send`: hands the message to the agent's task, which journals
/// it (so it is never lost) and delivers it; answers its id.
pub(super) async fn send_message(
    daemon: &Daemon,
    agent: &AgentRecord,
    from: String,
    text: String,
    key: Option<String>,
) -> Result<String> {
    if let Some(sent) = key.as_ref().and_then(|key| sent_with_key(agent, key)) {
        return Ok(sent); // Sent already: a retry, after its answer was lost.
    }
    let (reply, answer) = oneshot::channel();
    if daemon.agents.control(&agent.address, Control::Send { from, text, key, reply }).is_err() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{} is {}; only a running agent takes messages", agent.address, agent.state.as_str()),
        ));
    }
    answer.await.map_err(|_| Error::new(ErrorKind::Refused, format!("{} has ended", agent.address)))?
}

async fn watch_monitor(
    daemon: &Arc<Daemon>,
    record: AgentRecord,
    link: Option<Link>,
    mut commands: mpsc::UnboundedReceiver<Control>,
) {
    let agent_dir = daemon.state.agent(record.id);
    let mut reader = OutputReader::resume(&record, agent_dir.log(), agent_env(&agent_dir.spec()));
    let exit = match link {
        Some(link) => follow_monitor(daemon, &record, &mut reader, link, &mut commands).await,
        None => daemon.runtime.exit_record(&agent_dir),
    };
    journal_untold_calls(daemon, &record.address, &agent_dir).await;
    // Its calls are over: what they held under its budgets is let go. A
    // monitor that vanished without an exit record may have sent a call it
    // never recorded: each admitted and not reported is charged what it
    // was admitted for (a meter never counts less than was used).
    let unreported = super::budgets::settle_call(daemon, &record.address, None);
    if exit.is_none() {
        charge_unrecorded(daemon, &record.address, &agent_dir, unreported).await;
    }
    flush_output(daemon, &record, &mut reader, true, &mut Progress::default()).await;
    // Whoever still waits to send learns the agent has ended.
    commands.close();
    while let Some(command) = commands.recv().await {
        if let Control::Send { reply, .. } = command {
            let _ = reply.send(Err(Error::new(ErrorKind::Refused, format!("{} has ended", record.address))));
        }
    }
    // Usage and results a full disk held back go in with the exit.
    let held = reader.take_held();
    settle(daemon, record, exit, held).await;
}

/// Relays commands to the monitor and output from it until the agent ends;
/// returns its exit record (None if the monitor vanished without one).
async fn follow_monitor(
    daemon: &Arc<Daemon>,
    record: &AgentRecord,
    reader: &mut OutputReader,
    link: Link,
    commands: &mut mpsc::UnboundedReceiver<Control>,
) -> Option<ExitRecord> {
    let agent_dir = daemon.state.agent(record.id);
    touch(daemon, &record.address);
    let (monitor_out, mut monitor_in) = link.into_split();
    let mut lines = BufReader::new(monitor_out).lines();
    let mut probes = ProbeRun::start(daemon, record, reader);
    let mut restarting = false;
    // What it did since its last progress digest (`notify = "progress"`).
    let mut progress = Progress::default();
    let every = daemon.config().supervisor.progress_interval.unwrap_or(notify::DEFAULT_PROGRESS_INTERVAL);
    let mut digest = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    // Admissions decided, on their way to the monitor.
    let mut admissions = mpsc::unbounded_channel::<(crate::proxy::Ask, crate::proxy::Decision)>();
    digest.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Messages handed to the monitor as follow-ups, not yet started.
    let mut handed = HashSet::new();
    // Catch up on output written while nobody watched, and on messages
    // accepted but not delivered before a daemon restart.
    flush_output(daemon, record, reader, false, &mut progress).await;
    // Whether the monitor holds the agent open for its children, as last told.
    let mut held = None;
    deliver_pending(daemon, &record.address, &mut monitor_in, &mut handed, restarting).await;
    close_input_if_done(daemon, &record.address, &mut monitor_in).await;
    hold_for_children(daemon, record, &mut monitor_in, &handed, &mut held).await;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<MonitorMessage>(&line) {
                    Ok(MonitorMessage::Output { .. }) => {
                        touch(daemon, &record.address);
                        // Read to the end of the log, not just to `log_len`: notices
                        // queued behind this one then find nothing new, so a
                        // chatty agent costs one journal write per batch, not
                        // one per notice.
                        flush_output(daemon, record, reader, false, &mut progress).await;
                        deliver_pending(daemon, &record.address, &mut monitor_in, &mut handed, restarting).await;
                        close_input_if_done(daemon, &record.address, &mut monitor_in).await;
                        hold_for_children(daemon, record, &mut monitor_in, &handed, &mut held).await;
                    }
                    Ok(MonitorMessage::Restarting { count, reason, backoff_secs, code, signal }) => {
                        let Some(current) = daemon.record(&record.address) else { continue };
                        // The run's probes end with it; the next run gets new ones.
                        probes = None;
                        reader.observations = None;
                        restarting = true;
                        let body = EventBody::Restarted { count, reason, backoff_secs, code, signal };
                        daemon.commit_logged(vec![daemon.draft(&current, body)]).await;
                    }
                    Ok(MonitorMessage::Started { pid, tag }) => {
                        // A restart or a follow-up: the agent goes on under a new pid.
                        let restarted = std::mem::take(&mut restarting);
                        if restarted {
                            probes = ProbeRun::start(daemon, record, reader);
                            touch(daemon, &record.address);
                        }
                        let Some(current) = daemon.record(&record.address) else { continue };
                        let monitor_pid = current.monitor_pid.unwrap_or(0);
                        let mut bodies = vec![EventBody::Started { pid, monitor_pid }];
                        if let Some(message_id) = tag {
                            bodies.push(delivered(&current, message_id));
                        }
                        let drafts = bodies.into_iter().map(|b| daemon.draft(&current, b)).collect();
                        daemon.commit_logged(drafts).await;
                        if restarted {
                            // What came during the back-off goes to this run.
                            deliver_pending(daemon, &record.address, &mut monitor_in, &mut handed, false).await;
                        }
                    }
                    Ok(MonitorMessage::Admit { ask }) => {
                        // Decided on a task of its own: it may wait for other
                        // calls under the same budget to settle.
                        let (daemon, address, answers) = (daemon.clone(), record.address.clone(), admissions.0.clone());
                        // A held call (its agent paused) is decided again
                        // after each raise, until it is sent or refused, or
                        // its agent's task ends.
                        tokio::spawn(async move {
                            loop {
                                let raised = daemon.budget_raised.notified();
                                let decision = super::budgets::admit(&daemon, &address, &ask).await;
                                let held = matches!(decision, crate::proxy::Decision::Hold { .. });
                                if answers.send((ask.clone(), decision)).is_err() || !held {
                                    return;
                                }
                                tokio::select! {
                                    _ = raised => {}
                                    _ = answers.closed() => return,
                                }
                            }
                        });
                    }
                    Ok(MonitorMessage::Admitted { ask, max_output }) => {
                        super::budgets::readmit(daemon, &record.address, ask, max_output);
                    }
                    Ok(MonitorMessage::ModelCall { record: call }) => {
                        journal_call(daemon, &record.address, call).await;
                    }
                    Ok(MonitorMessage::Exit { record }) => return Some(record),
                    Ok(MonitorMessage::Status { .. }) => {}
                    Err(err) => tracing::warn!("{}: bad monitor message {line:?}: {err}", record.address),
                },
                // The monitor went away: its exit record says how it ended.
                Ok(None) | Err(_) => return daemon.runtime.exit_record(&agent_dir),
            },
            event = next_probe_event(&mut probes) => {
                let Some(current) = daemon.record(&record.address) else { continue };
                let kill = event.verdict().is_some();
                daemon.commit_logged(vec![daemon.draft(&current, probe_body(&event))]).await;
                if kill {
                    probes = None;
                    let grace_secs = current.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
                    let stop = MonitorCommand::Stop { grace_secs, probe_failed: true };
                    let _ = send_monitor(&mut monitor_in, &stop).await;
                }
            }
            Some(command) = commands.recv() => match command {
                Control::Stop { grace_secs } => {
                    // A failed write shows up as the end of the read side.
                    let stop = MonitorCommand::Stop { grace_secs, probe_failed: false };
                    let _ = send_monitor(&mut monitor_in, &stop).await;
                }
                Control::Send { from, text, key, reply } => {
                    let result = accept_message(daemon, &record.address, from, text, key).await;
                    let _ = reply.send(result);
                    deliver_pending(daemon, &record.address, &mut monitor_in, &mut handed, restarting).await;
                }
                Control::Deliver => {
                    deliver_pending(daemon, &record.address, &mut monitor_in, &mut handed, restarting).await;
                    close_input_if_done(daemon, &record.address, &mut monitor_in).await;
                    hold_for_children(daemon, record, &mut monitor_in, &handed, &mut held).await;
                }
                Control::Child { ack } => {
                    hold_for_children(daemon, record, &mut monitor_in, &handed, &mut held).await;
                    let _ = ack.send(());
                }
                Control::Pause => {
                    let _ = send_monitor(&mut monitor_in, &MonitorCommand::Freeze).await;
                }
                Control::Resume => {
                    touch(daemon, &record.address);
                    let _ = send_monitor(&mut monitor_in, &MonitorCommand::Thaw).await;
                }
            },
            Some((ask, decision)) = admissions.1.recv() => {
                // A refusal stops the agent as for any budget; a hold pauses it.
                let refused = !matches!(decision, crate::proxy::Decision::Allow { .. });
                let admission = MonitorCommand::Admission { call: ask.call, decision };
                if send_monitor(&mut monitor_in, &admission).await.is_err() {
                    // Never reaches the agent: its monitor refuses the call
                    // when its own wait runs out. What it held is let go.
                    super::budgets::settle_call(daemon, &record.address, Some(ask.call));
                }
                // A call refused (or held) for a budget: that budget is spent
                // for this agent, which stops (or pauses) as the budget says.
                if refused {
                    let pending = ask.estimate_input.max(1);
                    super::budgets::enforce_budgets_with(daemon, &record.address, pending).await;
                }
            }
            _ = digest.tick() => {
                if notices::progress(daemon, record, &progress).await {
                    progress = Progress::default();
                }
            }
        }
    }
}

/// Journals a model call the agent's proxy reported (once: a monitor tells
/// each daemon that connects every call so far, its `index` counting them
/// in the order they ended), then checks the budgets over the agent.
async fn journal_call(daemon: &Arc<Daemon>, address: &Address, call: crate::proxy::CallRecord) {
    let Some(current) = daemon.record(address) else { return };
    let told = match (call.index, current.calls_journaled) {
        (Some(index), Some(journaled)) => index < journaled,
        // A monitor of an earlier build numbers nothing, a record of one
        // counted nothing: by call number.
        _ => call.call <= current.calls,
    };
    if !told {
        journal_model_call(daemon, &current, call).await;
    }
}

/// Journals the calls of an ended agent that its monitor recorded and
/// never told (it ended with no daemon listening, or was killed before it
/// could): they are in its calls file, in the order it would have told.
pub(super) async fn journal_untold_calls(
    daemon: &Arc<Daemon>,
    address: &Address,
    agent_dir: &crate::sys::paths::AgentDir,
) {
    // Those told already are passed over here, not one by one.
    let told = daemon.record(address).and_then(|r| r.calls_journaled).unwrap_or(0);
    for (line, mut call) in crate::monitor::read_calls(agent_dir).into_iter().enumerate() {
        // Its own index, which a lost line before it does not shift (a
        // file of an earlier build has none: its place).
        if *call.index.get_or_insert(line as u64) >= told {
            journal_call(daemon, address, call).await;
        }
    }
}

/// Charges each call the agent's monitor was admitted for and never
/// recorded, when the monitor vanished without an exit record. Its
/// `admitted.jsonl` names every call it may have sent (it keeps each
/// admission before it sends); a monitor of an earlier build kept none,
/// and the admissions this daemon holds (`held`) stand in. Calls its calls
/// file records were journaled before this.
pub(super) async fn charge_unrecorded(
    daemon: &Arc<Daemon>,
    address: &Address,
    agent_dir: &crate::sys::paths::AgentDir,
    held: Vec<super::budgets::Admitted>,
) {
    let recorded: std::collections::HashSet<u64> =
        crate::monitor::read_calls(agent_dir).iter().map(|call| call.call).collect();
    let admitted: Vec<super::budgets::Admitted> = match crate::monitor::read_admitted(agent_dir) {
        Some(lines) => lines.into_iter().map(|line| super::budgets::Admitted::new(line.ask, line.max_output)).collect(),
        None => held,
    };
    let mut seen = std::collections::HashSet::new();
    for admitted in admitted {
        if !recorded.contains(&admitted.ask.call) && seen.insert(admitted.ask.call) {
            charge_unreported(daemon, address, agent_dir, admitted).await;
        }
    }
}

/// Journals a call admitted whose monitor vanished before recording it,
/// charged its input floor and its output cap. The charge goes into the
/// calls file first, as the call's record: a daemon that dies before
/// journaling it, or after, finds it there, and it is journaled once.
async fn charge_unreported(
    daemon: &Arc<Daemon>,
    address: &Address,
    agent_dir: &crate::sys::paths::AgentDir,
    admitted: super::budgets::Admitted,
) {
    let Some(current) = daemon.record(address) else { return };
    let ask = admitted.ask;
    tracing::warn!("{address}: call {} was admitted and never reported; charged what it was admitted for", ask.call);
    let usage = corral_harness::TokenUsage {
        input: ask.input_floor.max(ask.estimate_input),
        output: admitted.output_cap,
        ..Default::default()
    };
    let call = crate::proxy::CallRecord {
        call: ask.call,
        provider: ask.provider,
        model: ask.model,
        status: 0,
        usage,
        flag: Some("the agent's monitor ended without reporting the call: charged what it was admitted for".into()),
        refused: None,
        estimate_input: ask.estimate_input,
        output_cap: Some(admitted.output_cap),
        started_at: chrono::Utc::now(),
        // Numbered after every call journaled, as its monitor would have.
        index: current.calls_journaled,
        ttfb_ms: 0.0,
        duration_ms: 0.0,
    };
    if let Err(err) = crate::monitor::record_call(agent_dir, &call) {
        tracing::warn!("{address}: cannot keep the charge for call {} in its calls file: {err}", call.call);
    }
    journal_call(daemon, address, call).await;
}

/// Journals one model call of the agent `current`, then checks the
/// budgets over it.
async fn journal_model_call(daemon: &Arc<Daemon>, current: &AgentRecord, call: crate::proxy::CallRecord) {
    let address = &current.address;
    let model = call.model.clone().or_else(|| current.model.clone());
    let cost_usd = super::budgets::price_call(daemon, model.as_deref(), &call.usage);
    let body = EventBody::ModelCall {
        call: call.call,
        provider: call.provider,
        model: call.model,
        status: call.status,
        usage: call.usage,
        cost_usd,
        flag: call.flag,
        refused: call.refused,
        estimate_input: call.estimate_input,
        output_cap: call.output_cap,
        ttfb_ms: call.ttfb_ms,
        duration_ms: call.duration_ms,
    };
    // Waits for a journal that cannot be written just now: a call left out
    // would be miscounted among those told again.
    daemon.commit_retrying(vec![daemon.draft(current, body)]).await;
    super::budgets::settle_call(daemon, address, Some(call.call));
    touch(daemon, address);
    enforce_budgets(daemon, address).await;
}

/// The event that says a pending message reached the agent: a child's
/// notice or a message someone sent.
pub(super) fn delivered(record: &AgentRecord, message_id: String) -> EventBody {
    match record.pending_messages.iter().find(|m| m.message_id == message_id) {
        Some(m) if m.notice => EventBody::NoticeDelivered { message_id, from: m.from.clone() },
        _ => EventBody::MessageDelivered { message_id },
    }
}

async fn send_monitor(monitor: &mut tokio::net::unix::OwnedWriteHalf, command: &MonitorCommand) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(command).expect("commands serialize");
    line.push(b'\n');
    monitor.write_all(&line).await
}

/// Journals a message for the agent, so it is never lost; delivery follows.
async fn accept_message(
    daemon: &Arc<Daemon>,
    address: &Address,
    from: String,
    text: String,
    key: Option<String>,
) -> Result<String> {
    let record = daemon
        .record(address)
        .ok_or_else(|| Error::new(ErrorKind::UnknownAddress, format!("no agent at {address}")))?;
    if let Some(sent) = key.as_ref().and_then(|key| sent_with_key(&record, key)) {
        return Ok(sent);
    }
    if let Delivery::Refuse(why) = record.harness.delivery() {
        return Err(Error::new(ErrorKind::Refused, format!("{address} cannot take messages: {why}")));
    }
    if record.input_closed || record.state.is_terminal() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{address} has finished its task and its input is closed; `corral assign` gives it a new one"),
        ));
    }
    let message_id = format!("{}-m{}", record.task_id, record.messages_sent + 1);
    let sent = EventBody::MessageSent { message_id: message_id.clone(), from, to: address.to_string(), text, key };
    daemon.commit(vec![daemon.draft(&record, sent)]).await?;
    Ok(message_id)
}

/// The id of the message the agent took with `key`, if it took one.
fn sent_with_key(record: &AgentRecord, key: &str) -> Option<String> {
    record.message_keys.iter().rev().find(|(k, _)| k == key).map(|(_, id)| id.clone())
}

/// Delivers the agent's journaled messages, oldest first, as far as its
/// harness can take them now: written to its input (then journaled as
/// delivered), or handed to the monitor as a follow-up process (journaled
/// as delivered when it starts). A message that cannot go yet (no session
/// to resume so far) waits, and so does every one after it.
async fn deliver_pending(
    daemon: &Arc<Daemon>,
    address: &Address,
    monitor: &mut tokio::net::unix::OwnedWriteHalf,
    handed: &mut HashSet<String>,
    restarting: bool,
) {
    // Between runs (a restart's back-off) there is no process to read a
    // message: it waits, queued, for the next run's start.
    if restarting {
        return;
    }
    let Some(record) = daemon.record(address) else { return };
    for message in &record.pending_messages {
        if handed.contains(&message.message_id) {
            continue;
        }
        let session = record.session_id.as_deref();
        let command = match record.harness.message_input(&message.text, session) {
            // Written to its input (Claude's stdin, a plain CLI's terminal).
            Some(data) => MonitorCommand::Input { data, id: Some(message.message_id.clone()) },
            // A follow-up process that resumes its session (Codex); with no
            // session yet, this message and the ones after it wait.
            None => match session.and_then(|s| record.harness.resume_argv(&record.command, s, &message.text)) {
                Some(command) => MonitorCommand::Then { command, tag: message.message_id.clone() },
                None => return,
            },
        };
        if let Err(err) = send_monitor(monitor, &command).await {
            tracing::warn!("{address}: cannot reach the monitor ({err}); messages stay queued");
            return;
        }
        handed.insert(message.message_id.clone());
        if let MonitorCommand::Input { .. } = command {
            let body = delivered(&record, message.message_id.clone());
            daemon.commit_logged(vec![daemon.draft(&record, body)]).await;
        }
    }
}

/// A JSON-lines agent that has answered all it was given gets its input
/// closed, so the CLI ends.
async fn close_input_if_done(daemon: &Arc<Daemon>, address: &Address, monitor: &mut tokio::net::unix::OwnedWriteHalf) {
    let Some(record) = daemon.record(address) else { return };
    // A parent whose children still report to it waits for their notices,
    // idle, with its input open.
    if record.input_done()
        && !notices::children_reporting(daemon, &record)
        && send_monitor(monitor, &MonitorCommand::CloseInput).await.is_ok()
    {
        daemon.commit_logged(vec![daemon.draft(&record, EventBody::InputClosed {})]).await;
    }
}

/// A CLI that takes a message as a new process (Codex) ends its process
/// with its turn: while its children still report to it, or a message for
/// it is not yet handed over, its monitor holds it (no process, no
/// tokens) for the follow-up that delivers them; then lets it end.
async fn hold_for_children(
    daemon: &Arc<Daemon>,
    agent: &AgentRecord,
    monitor: &mut tokio::net::unix::OwnedWriteHalf,
    handed: &HashSet<String>,
    held: &mut Option<bool>,
) {
    // Asked after every batch of output: the harness, which never changes,
    // says first whether there is anything to look at.
    if agent.harness.delivery() != Delivery::Resume {
        return;
    }
    let address = &agent.address;
    let Some(record) = daemon.record(address) else { return };
    if record.state.is_terminal() {
        return;
    }
    let hold = notices::children_reporting(daemon, &record)
        || record.pending_messages.iter().any(|m| !handed.contains(&m.message_id));
    if *held != Some(hold) && send_monitor(monitor, &MonitorCommand::Hold { hold }).await.is_ok() {
        tracing::debug!("{address}: held for its children: {hold}");
        *held = Some(hold);
    }
}

/// Settles an ended agent: its last output, then its exit.
async fn settle(daemon: &Arc<Daemon>, record: AgentRecord, exit: Option<ExitRecord>, held: Vec<EventBody>) {
    let current = daemon.record(&record.address).unwrap_or(record);
    let mut held = held;
    if let Some(lost) = exit.as_ref().map(|e| e.log_bytes_lost).filter(|lost| *lost > 0) {
        let text = format!("[corral: {lost} bytes of its output could not be kept in its log (the disk was full)]");
        held.push(EventBody::Output { text, offset: current.log_offset, skipped: 0 });
    }
    let body = match exit {
        Some(exit) => exited_body(&exit, &current),
        None => EventBody::Exited {
            state: AgentState::Lost,
            code: None,
            signal: None,
            reason: Some("its monitor vanished without an exit record".into()),
        },
    };
    // How an agent ended is never dropped: while the journal cannot be
    // written, try again until it can (the monitor's exit record keeps it
    // meanwhile, and a restarted daemon reads it from there).
    // Its notice to its parent goes in the same commit as its exit.
    let notice = notices::completion(daemon, &current, &body, &daemon.state.agent(current.id).log());
    let mut drafts: Vec<Draft> = held.into_iter().map(|b| daemon.draft(&current, b)).collect();
    drafts.push(daemon.draft(&current, body));
    let notified = notice.is_some();
    drafts.extend(notice);
    daemon.commit_retrying(drafts).await;
    if notified {
        if let Some(parent) = daemon.record(&current.parent) {
            notices::deliver(daemon, &parent);
        }
    }
    let ended = daemon.record(&current.address).unwrap_or(current);
    // A task queued with `assign --queue` runs next, unless it was stopped.
    if matches!(ended.state, AgentState::Succeeded | AgentState::Failed) {
        if let Some((task_id, task)) = ended.queued_tasks.first().cloned() {
            if let Err(err) = assign::start_assigned(daemon, &ended, task_id, task).await {
                tracing::warn!("{}: cannot start its queued task: {err}", ended.address);
            }
            return;
        }
    }
    // A slot is free: the next pending agent may start.
    let dispatcher = daemon.clone();
    tokio::spawn(async move { start::dispatch_pending(&dispatcher).await });
    if ended.state == AgentState::Succeeded && ended.merge.policy == crate::config::MergePolicy::Auto {
        merges::enqueue_merge(daemon, &ended.address, None, None).await;
    }
}

pub(super) fn exited_body(exit: &ExitRecord, record: &AgentRecord) -> EventBody {
    let stop_requested = record.stop_requested || exit.stop_requested;
    let expects_result = record.harness.reports_results();
    let result = record.result.as_ref();
    let mut state = classify_exit(exit.code, exit.signal, stop_requested, result, expects_result, record.stopped_for);
    // A resource limit that ended it (its monitor tells) is why it failed.
    if let (AgentState::Failed, Some(hit)) = (state, &exit.limit) {
        state = AgentState::LimitExceeded;
        let reason = Some(format!("limit exceeded: {}", hit.describe()));
        return EventBody::Exited { state, code: exit.code, signal: exit.signal, reason };
    }
    let result_failed = result.filter(|r| !r.success);
    let reason = match (state, exit.code, exit.signal, result_failed) {
        (AgentState::BudgetExceeded | AgentState::TimedOut, _, _, _) => Some(match record.exceeded {
            Some((kind, used, limit)) => format!("budget exceeded: {}", kind.describe(used, limit)),
            None => format!(
                "budget exceeded: {} (the budget of an agent above it)",
                record.stopped_for.map_or("?", BudgetKind::as_str)
            ),
        }),
        (AgentState::Stopped, _, _, _) => Some("stopped on request".to_string()),
        (AgentState::Failed, _, _, _) if record.probe_killed.is_some() => record.probe_killed.clone(),
        (_, _, Some(signal), _) => Some(format!("killed by signal {signal}")),
        (AgentState::Failed, _, _, Some(result)) => {
            Some(result.reason.clone().unwrap_or_else(|| "the agent reported an error".into()))
        }
        (AgentState::Failed, Some(0), _, None) => Some("it exited without reporting a result".into()),
        (AgentState::Failed, Some(code), _, _) => Some(format!("exited with code {code}")),
        _ => None,
    };
    EventBody::Exited { state, code: exit.code, signal: exit.signal, reason }
}

/// Reads the output written since the last call and journals it.
pub(super) async fn flush_output(
    daemon: &Arc<Daemon>,
    record: &AgentRecord,
    reader: &mut OutputReader,
    last: bool,
    progress: &mut Progress,
) {
    let bodies = match reader.read(last) {
        Ok(bodies) => bodies,
        Err(err) => {
            tracing::warn!("{}: cannot read output: {err}", record.address);
            return;
        }
    };
    let mut all = reader.take_held();
    all.extend(bodies);
    if all.is_empty() {
        return;
    }
    price_usage(daemon, record, &mut all);
    let spent = all.iter().any(|b| matches!(b, EventBody::Usage { .. }));
    let drafts = all.iter().map(|body| daemon.draft(record, body.clone())).collect();
    if let Err(err) = daemon.commit(drafts).await {
        // The journal cannot be written: usage and results wait for the
        // next flush; lines are left out, and counted.
        let dropped = reader.hold(all);
        daemon.store.count_dropped_output(dropped);
        tracing::debug!("{}: output not journaled: {err}", record.address);
        return;
    }
    for body in &all {
        match body {
            EventBody::ToolUse { name, .. } => progress.tool(name),
            EventBody::Usage { delta, .. } => progress.tokens = progress.tokens.saturating_add(delta.total()),
            EventBody::Output { .. } | EventBody::Progress { .. } => progress.lines += 1,
            _ => {}
        }
    }
    if spent {
        enforce_budgets(daemon, &record.address).await;
    }
}
