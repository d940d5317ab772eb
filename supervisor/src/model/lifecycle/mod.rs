//! The lifecycle of one agent, as a plain state machine.
//!
//! ```text
//! Pending -> Starting -> Running -> Succeeded | Failed | Stopped | Lost
//! ```
//!
//! An agent's record is the fold of its events (`AgentRecord::apply`): the
//! daemon rebuilds every record from the journal when it starts, so this is
//! the one place that says what an event means for an agent. Nothing here
//! touches processes or files.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use corral_harness::{Harness, TokenUsage};

use crate::model::budget::{Budget, BudgetKind};
use serde::{Deserialize, Serialize};

use crate::model::address::Address;
use crate::model::event::{Event, EventBody};

/// Where an agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Waiting for a slot.
    Pending,
    /// Worktree and monitor being made.
    Starting,
    /// The agent's process runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, or was killed by a signal nobody asked for.
    Failed,
    /// Stopped on request; none of its processes is left.
    Stopped,
    /// Stopped because a budget (its own or an ancestor's) was spent.
    BudgetExceeded,
    /// Stopped because it ran past its wall-time budget.
    TimedOut,
    /// Ended by one of its resource limits (`max_memory`, `max_processes`);
    /// the reason names the limit. Its siblings are not touched.
    LimitExceeded,
    /// Its monitor vanished and no exit record was found.
    Lost,
}

impl AgentState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AgentState::Succeeded
                | AgentState::Failed
                | AgentState::Stopped
                | AgentState::BudgetExceeded
                | AgentState::TimedOut
                | AgentState::LimitExceeded
                | AgentState::Lost
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Pending => "pending",
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Succeeded => "succeeded",
            AgentState::Failed => "failed",
            AgentState::Stopped => "stopped",
            AgentState::Lost => "lost",
            AgentState::BudgetExceeded => "budget_exceeded",
            AgentState::TimedOut => "timed_out",
            AgentState::LimitExceeded => "limit_exceeded",
        }
    }

    /// The exit code `corral wait` gives for an agent that ended this way
    /// (README, "Exit codes"). With several agents, `wait` exits with the
    /// largest.
    pub fn wait_code(self) -> i32 {
        match self {
            AgentState::Succeeded => 0,
            AgentState::Failed => 20,
            AgentState::Stopped => 21,
            AgentState::Lost => 22,
            AgentState::BudgetExceeded => 23,
            AgentState::TimedOut => 25,
            AgentState::LimitExceeded => LIMIT_EXCEEDED,
            AgentState::Pending | AgentState::Starting | AgentState::Running => WAIT_TIMED_OUT,
        }
    }
}

/// `corral wait`'s code for an agent a resource limit ended (31 is
/// `corral run`'s skipped run).
pub const LIMIT_EXCEEDED: i32 = 32;

/// `corral wait --timeout` ran out before every agent ended.
pub const WAIT_TIMED_OUT: i32 = 124;

/// The subcommand of a run's driver (`corral run-driver`, see `cli::run`):
/// an agent that only waits for the agents it spawns.
pub const RUN_DRIVER_COMMAND: &str = "run-driver";

/// An agent's stop grace (SIGTERM, this long, SIGKILL) when neither its
/// spawn nor `[supervisor] grace` gave one: the one place it is written.
pub const DEFAULT_GRACE_SECS: f64 = 10.0;

/// What froze a paused agent (see [`EventBody::Paused`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    pub kind: BudgetKind,
    pub used: f64,
    pub limit: f64,
    /// The agent whose budget it is (the agent itself or an ancestor).
    pub owner: Address,
}

/// How many message keys an agent's record keeps (see
/// [`AgentRecord::message_keys`]): a retry comes within seconds.
pub const MESSAGE_KEYS_KEPT: usize = 64;

/// Everything known about one agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub address: Address,
    pub parent: Address,
    /// Names the agent's folder in the state folder.
    pub id: u64,
    pub task_id: String,
    pub task: String,
    pub command: Vec<String>,
    pub branch: String,
    pub worktree: PathBuf,
    /// The commit the branch started from.
    pub base: String,
    pub state: AgentState,
    pub pid: Option<u32>,
    pub monitor_pid: Option<u32>,
    pub spawned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub stop_requested: bool,
    /// Its worktree was removed by `corral gc`.
    pub removed: bool,
    /// How far into the output log events have been made.
    pub log_offset: u64,
    /// Which agent CLI runs (see `corral_harness::launch`).
    #[serde(default)]
    pub harness: Harness,
    /// Tokens used so far: from its `model_call` events when the proxy
    /// meters it, else from the harness's usage events.
    #[serde(default)]
    pub usage: TokenUsage,
    /// Where its usage is counted.
    #[serde(default)]
    pub meter: crate::model::budget::Meter,
    /// The number of its last `model_call` event (calls the proxy reports
    /// again after a daemon restart are journaled once).
    #[serde(default)]
    pub calls: u64,
    /// How many `model_call` events its current run has: calls end in any
    /// order, and a monitor tells them again in that order to each daemon.
    /// Unknown (`None`) in a record folded before it was counted: calls are
    /// then told apart by number.
    #[serde(default)]
    pub calls_journaled: Option<u64>,
    /// A `model_call` of its was priced from `[prices]`: its cost is the
    /// calls' (else, for a proxy-metered agent, the CLI's own figure).
    #[serde(default)]
    pub calls_priced: bool,
    #[serde(default)]
    pub cost_usd: Option<f64>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// The CLI's last result.
    #[serde(default)]
    pub result: Option<ResultSummary>,
    #[serde(default)]
    pub results: u64,
    /// Messages accepted but not yet delivered, oldest first.
    #[serde(default)]
    pub pending_messages: Vec<PendingMessage>,
    #[serde(default)]
    pub messages_sent: u64,
    /// The keys of the latest messages sent with one, and their ids: a
    /// `corral send` retried after it lost the daemon gets its message's
    /// id back instead of sending it twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub message_keys: Vec<(String, String)>,
    /// How far the daemon read the CLI's own session log for usage (Gemini
    /// CLI's), and of which session: a restarted daemon reads it again to
    /// there without counting it, then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_log_at: Option<(String, u64)>,
    /// A message reached the agent since its last result.
    #[serde(default)]
    pub delivered_since_result: bool,
    /// Messages reached the agent during its last turn, so another turn
    /// follows that result.
    #[serde(default)]
    pub turn_pending: bool,
    /// Between turns: its last result answered everything delivered to it.
    /// A message delivered now starts a turn of its own (and does not make
    /// another one pending).
    #[serde(default)]
    pub idle: bool,
    #[serde(default)]
    pub input_closed: bool,
    #[serde(default)]
    pub budget: Budget,
    #[serde(default)]
    pub grace_secs: Option<f64>,
    /// Budget kinds of its own already warned about.
    #[serde(default)]
    pub warned: Vec<BudgetKind>,
    /// Its own budget that was spent, with the figures.
    #[serde(default)]
    pub exceeded: Option<(BudgetKind, f64, f64)>,
    /// The budget (its own or an ancestor's) it was stopped for.
    #[serde(default)]
    pub stopped_for: Option<BudgetKind>,
    /// While frozen by a spent `pause` budget: which, how much was used of
    /// what limit, and whose budget it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
    #[serde(default)]
    pub probes: corral_probes::ProbeSet,
    #[serde(default)]
    pub restart: crate::model::restart::RestartSpec,
    /// Ready by its probes (true from the start when it has no startup or
    /// readiness probe).
    #[serde(default)]
    pub ready: bool,
    /// Restarts so far.
    #[serde(default)]
    pub restarts: u32,
    /// Runs started so far (a spawn's first, then each assigned task's):
    /// an agent back in Starting with runs behind it holds earlier work.
    #[serde(default)]
    pub runs: u32,
    /// Why its current run was killed by a probe, if it was.
    #[serde(default)]
    pub probe_killed: Option<String>,
    /// The model, as asked for at spawn or as the CLI reported it.
    #[serde(default)]
    pub model: Option<String>,
    /// How its work goes back: policy, target, strategy, gate.
    #[serde(default)]
    pub merge: MergeSpec,
    /// Where its merge stands, once one was asked for.
    #[serde(default)]
    pub merge_state: Option<MergeState>,
    /// The strategy its last merge was queued with (`corral merge
    /// --strategy`), which a restarted daemon merges it by; none: its own
    /// (`merge.strategy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_asked: Option<crate::git::merge::Strategy>,
    /// What it may write (its children never get more).
    #[serde(default)]
    pub sandbox: Option<crate::config::Sandbox>,
    /// What TCP it may open, as asked (its children never get more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::config::Network>,
    /// Its resource limits (its children's are never larger).
    #[serde(default, skip_serializing_if = "crate::sys::sandbox::Limits::is_empty")]
    pub limits: crate::sys::sandbox::Limits,
    /// What the kernel was made to enforce: the Landlock ABI, the rules,
    /// each limit and how (see `crate::sys::sandbox`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced: Option<crate::sys::sandbox::Enforced>,
    /// What it tells its parent agent (`model::notify`); `None` for an
    /// agent spawned before notices existed, which tells nothing.
    #[serde(default)]
    pub notify: Option<crate::model::notify::Notify>,
    /// The ids of the notices it sent its parent (each is sent once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
    /// Tasks given with `corral assign --queue`, for when it finishes:
    /// (task id, task).
    #[serde(default)]
    pub queued_tasks: Vec<(String, String)>,
}

/// How an agent's work goes back onto a branch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeSpec {
    pub policy: crate::config::MergePolicy,
    /// The branch it goes onto (None: there was no branch to default to).
    pub target: Option<String>,
    pub strategy: crate::git::merge::Strategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<crate::sys::gate::Gate>,
}

/// Where an agent's merge stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MergeState {
    Queued,
    Merging {
        target: String,
        old: String,
        new: String,
    },
    Merged {
        commit: String,
        commits: usize,
    },
    Conflict {
        files: Vec<String>,
    },
    GateFailed {
        code: Option<i32>,
        output: String,
    },
    /// The target is checked out with uncommitted changes; corral retries.
    Waiting {
        why: String,
        files: Vec<String>,
    },
    Refused {
        why: String,
    },
}

impl MergeState {
    /// Settled: nothing more happens without someone asking.
    pub fn is_settled(&self) -> bool {
        !matches!(self, MergeState::Queued | MergeState::Merging { .. })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            MergeState::Queued => "queued",
            MergeState::Merging { .. } => "merging",
            MergeState::Merged { .. } => "merged",
            MergeState::Conflict { .. } => "conflict",
            MergeState::GateFailed { .. } => "gate_failed",
            MergeState::Waiting { .. } => "waiting",
            MergeState::Refused { .. } => "refused",
        }
    }

    /// The exit code `corral wait` and `corral merge` give (README).
    pub fn exit_code(&self) -> i32 {
        match self {
            MergeState::Merged { .. } => 0,
            MergeState::Conflict { .. } => 27,
            MergeState::GateFailed { .. } => 28,
            MergeState::Waiting { .. } => 29,
            MergeState::Refused { .. } => 30,
            MergeState::Queued | MergeState::Merging { .. } => WAIT_TIMED_OUT,
        }
    }
}

/// How the agent CLI said its last turn went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultSummary {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The agent's final message (what a notice to its parent carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A message waiting for delivery; it survives a daemon restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingMessage {
    pub message_id: String,
    pub from: String,
    pub text: String,
    /// A child's notice rather than a message someone sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notice: bool,
}

impl AgentRecord {
    /// The record a `spawned` event creates.
    pub fn from_spawned(event: &Event) -> Option<AgentRecord> {
        let EventBody::Spawned {
            id,
            harness,
            task_text,
            command,
            branch,
            worktree,
            base,
            budget,
            grace_secs,
            probes,
            restart,
            model,
            merge,
            sandbox,
            notify,
            meter,
        } = &event.body
        else {
            return None;
        };
        let address = event.agent.clone()?;
        Some(AgentRecord {
            parent: event.parent.clone().or_else(|| address.parent()).unwrap_or_else(Address::root),
            address,
            id: *id,
            task_id: event.task.clone().unwrap_or_default(),
            task: task_text.clone(),
            command: command.clone(),
            branch: branch.clone(),
            worktree: worktree.clone(),
            base: base.clone(),
            state: AgentState::Starting,
            pid: None,
            monitor_pid: None,
            spawned_at: event.ts,
            started_at: None,
            ended_at: None,
            exit_code: None,
            signal: None,
            reason: None,
            stop_requested: false,
            removed: false,
            log_offset: 0,
            harness: *harness,
            usage: TokenUsage::default(),
            meter: *meter,
            calls: 0,
            calls_journaled: Some(0),
            calls_priced: false,
            cost_usd: None,
            session_id: None,
            result: None,
            results: 0,
            pending_messages: Vec::new(),
            message_keys: Vec::new(),
            usage_log_at: None,
            messages_sent: 0,
            delivered_since_result: false,
            turn_pending: false,
            idle: false,
            input_closed: false,
            budget: *budget,
            grace_secs: *grace_secs,
            warned: Vec::new(),
            exceeded: None,
            stopped_for: None,
            paused: None,
            probes: probes.clone(),
            restart: *restart,
            ready: false,
            restarts: 0,
            runs: 0,
            probe_killed: None,
            model: model.clone(),
            merge: merge.clone(),
            merge_state: None,
            merge_asked: None,
            sandbox: sandbox.as_ref().and_then(|s| s.mode),
            network: sandbox.as_ref().and_then(|s| s.network),
            limits: sandbox.as_ref().map(|s| s.limits).unwrap_or_default(),
            enforced: sandbox.as_ref().and_then(|s| s.enforced.clone()),
            notify: *notify,
            notices: Vec::new(),
            queued_tasks: Vec::new(),
        })
    }

    /// Applies one of this agent's events. Events that do not fit the
    /// current state (an `exited` after the agent already ended) are
    /// ignored: the first word on how an agent ended stands.
    pub fn apply(&mut self, event: &Event) {
        if let Some(offset) = event.body.log_offset() {
            self.log_offset = self.log_offset.max(offset);
        }
        match &event.body {
            EventBody::Started { pid, monitor_pid } | EventBody::Adopted { pid, monitor_pid } => {
                if !self.state.is_terminal() {
                    if self.state != AgentState::Running && matches!(event.body, EventBody::Started { .. }) {
                        self.runs += 1;
                    }
                    if self.state != AgentState::Running {
                        self.ready = self.probes.startup.is_none() && self.probes.readiness.is_none();
                    }
                    self.state = AgentState::Running;
                    self.pid = Some(*pid);
                    self.monitor_pid = Some(*monitor_pid);
                    if self.started_at.is_none() {
                        self.started_at = Some(event.ts);
                    }
                }
            }
            EventBody::SessionStarted { session_id, model, .. } => {
                if session_id.is_some() {
                    self.session_id = session_id.clone();
                }
                if model.is_some() {
                    self.model = model.clone();
                }
            }
            // A proxy-metered agent's usage comes from its calls alone: the
            // stream parser's figures would count the same calls twice.
            EventBody::Usage { delta, total, cost_usd, usage_log_offset, .. }
                if self.meter == crate::model::budget::Meter::Stream =>
            {
                if let (Some(at), Some(session)) = (usage_log_offset, &self.session_id) {
                    self.usage_log_at = Some((session.clone(), *at));
                }
                // What each event added, and never less than the CLI's own
                // total: a parser rebuilt after a daemon restart may know
                // less than was counted before (a run whose figures only
                // its CLI's session log held), and its total then starts
                // again lower; its deltas still say what each call added.
                self.usage = self.usage.saturating_add(*delta).max(*total);
                if let Some(cost) = cost_usd {
                    self.cost_usd = Some(self.cost_usd.map_or(*cost, |counted| counted.max(*cost)));
                }
            }
            EventBody::ModelCall { call, usage, cost_usd, .. } => {
                self.usage = self.usage.saturating_add(*usage);
                if let Some(cost) = cost_usd {
                    // The first priced call replaces what the CLI said.
                    let before = if self.calls_priced { self.cost_usd.unwrap_or(0.0) } else { 0.0 };
                    self.cost_usd = Some(crate::model::budget::cost_sum(before, *cost));
                    self.calls_priced = true;
                }
                self.calls = self.calls.max(*call);
                if let Some(journaled) = &mut self.calls_journaled {
                    *journaled += 1;
                }
            }
            // Proxy-metered: the tokens are the calls'; a cost the CLI
            // reports stands until a call is priced from `[prices]`.
            EventBody::Usage { cost_usd, .. } => {
                if cost_usd.is_some() && !self.calls_priced {
                    self.cost_usd = *cost_usd;
                }
            }
            EventBody::Result { success, reason, session_id, text, .. } => {
                self.result = Some(ResultSummary { success: *success, reason: reason.clone(), text: text.clone() });
                self.results += 1;
                // A message that arrived during this turn is answered in the next.
                self.turn_pending = self.delivered_since_result;
                self.idle = !self.turn_pending;
                self.delivered_since_result = false;
                if session_id.is_some() {
                    self.session_id = session_id.clone();
                }
            }
            EventBody::MessageSent { message_id, from, text, key, .. } => {
                self.messages_sent += 1;
                if let Some(key) = key {
                    if self.message_keys.len() >= MESSAGE_KEYS_KEPT {
                        self.message_keys.remove(0);
                    }
                    self.message_keys.push((key.clone(), message_id.clone()));
                }
                self.pending_messages.push(PendingMessage {
                    message_id: message_id.clone(),
                    from: from.clone(),
                    text: text.clone(),
                    notice: false,
                });
            }
            // The child's side; the parent's is in `AgentTable::apply`.
            EventBody::NoticeSent { message_id, .. } => {
                if !self.notices.contains(message_id) {
                    self.notices.push(message_id.clone());
                }
            }
            EventBody::MessageDelivered { message_id } | EventBody::NoticeDelivered { message_id, .. } => {
                self.pending_messages.retain(|m| &m.message_id != message_id);
                if self.idle {
                    // Between turns: this message is a turn of its own.
                    self.idle = false;
                } else {
                    self.delivered_since_result = true;
                }
            }
            EventBody::InputClosed {} => self.input_closed = true,
            EventBody::Queued {} => {
                if self.state == AgentState::Starting {
                    self.state = AgentState::Pending;
                }
            }
            EventBody::TaskQueued { task_id, task_text } => {
                self.queued_tasks.push((task_id.clone(), task_text.clone()))
            }
            // The record's `command` stays the launch command: each run
            // derives from it, so the run's own command is not kept here.
            EventBody::Assigned { task_text, .. } => {
                // A new run with a new task: what ended is history (the
                // journal keeps it); usage and budgets carry on.
                if let Some(task_id) = &event.task {
                    self.queued_tasks.retain(|(id, _)| id != task_id);
                    self.task_id = task_id.clone();
                }
                self.task = task_text.clone();
                self.state = AgentState::Starting;
                self.pid = None;
                self.monitor_pid = None;
                // What stopped the last run stopped that run only.
                self.stopped_for = None;
                self.started_at = None;
                self.ended_at = None;
                self.exit_code = None;
                self.signal = None;
                self.reason = None;
                self.stop_requested = false;
                self.result = None;
                self.results = 0;
                self.delivered_since_result = false;
                self.turn_pending = false;
                self.idle = false;
                self.input_closed = false;
                self.merge_state = None;
                self.merge_asked = None;
                self.probe_killed = None;
                // Its monitor and proxy are new: calls count from 1 again.
                self.calls = 0;
                self.calls_journaled = Some(0);
            }
            EventBody::MergeQueued { strategy } => {
                self.merge_state = Some(MergeState::Queued);
                self.merge_asked = *strategy;
            }
            EventBody::MergeStarted { target, old, new, .. } => {
                self.merge_state =
                    Some(MergeState::Merging { target: target.clone(), old: old.clone(), new: new.clone() })
            }
            EventBody::Merged { commit, commits, .. } => {
                self.merge_state = Some(MergeState::Merged { commit: commit.clone(), commits: *commits })
            }
            EventBody::Conflict { files } => self.merge_state = Some(MergeState::Conflict { files: files.clone() }),
            EventBody::GateFailed { code, output } => {
                self.merge_state = Some(MergeState::GateFailed { code: *code, output: output.clone() })
            }
            EventBody::MergeWaiting { why, files } => {
                self.merge_state = Some(MergeState::Waiting { why: why.clone(), files: files.clone() })
            }
            EventBody::MergeRefused { why } => self.merge_state = Some(MergeState::Refused { why: why.clone() }),
            EventBody::Probe { change, probe, message, .. } => match change.as_str() {
                "ready" => self.ready = true,
                "not_ready" => self.ready = false,
                "kill" => {
                    self.ready = false;
                    self.probe_killed = Some(format!("{probe} probe failed: {message}"));
                }
                _ => {}
            },
            EventBody::Restarted { count, .. } => {
                // A new process: its readiness, input and turns start over.
                self.restarts = self.restarts.max(*count);
                self.probe_killed = None;
                self.ready = self.probes.startup.is_none() && self.probes.readiness.is_none();
                self.input_closed = false;
                self.results = 0;
                self.result = None;
                self.delivered_since_result = false;
                self.turn_pending = false;
                self.idle = false;
            }
            EventBody::Output { .. }
            | EventBody::Progress { .. }
            | EventBody::ToolUse { .. }
            | EventBody::ToolResult { .. } => {}
            EventBody::StopRequested { budget, .. } => {
                self.stop_requested = true;
                if budget.is_some() && self.stopped_for.is_none() {
                    self.stopped_for = *budget;
                }
            }
            EventBody::BudgetWarning { kind, .. } => {
                if !self.warned.contains(kind) {
                    self.warned.push(*kind);
                }
            }
            EventBody::Paused { kind, used, limit, owner } => {
                self.paused = Some(Paused { kind: *kind, used: *used, limit: *limit, owner: owner.clone() });
            }
            EventBody::Resumed { .. } => self.paused = None,
            EventBody::BudgetRaised { kind, limit, .. } => match kind {
                BudgetKind::Tokens => self.budget.tokens = Some(*limit as u64),
                BudgetKind::OutputTokens => self.budget.output_tokens = Some(*limit as u64),
                BudgetKind::Cost => self.budget.cost = Some(*limit),
                _ => {}
            },
            EventBody::BudgetExceeded { kind, used, limit } => {
                if self.exceeded.is_none() {
                    self.exceeded = Some((*kind, *used, *limit));
                }
            }
            EventBody::Exited { state, code, signal, reason } => {
                self.paused = None;
                if !self.state.is_terminal() {
                    self.state = *state;
                    self.exit_code = *code;
                    self.signal = *signal;
                    self.reason = reason.clone();
                    self.ended_at = Some(event.ts);
                }
            }
            EventBody::Removed { .. } => self.removed = true,
            EventBody::DaemonStarted { .. }
            | EventBody::JournalRepaired { .. }
            | EventBody::JournalResumed { .. }
            | EventBody::Spawned { .. }
            | EventBody::SpawnFailed { .. } => {}
        }
    }

    /// The exit code `corral wait` gives for this agent (README, "Exit
    /// codes"): the state's, with budgets told apart by kind.
    pub fn wait_code(&self) -> i32 {
        if let (AgentState::Succeeded, Some(merge)) = (self.state, &self.merge_state) {
            return merge.exit_code();
        }
        match (self.state, self.stopped_for) {
            (AgentState::BudgetExceeded, Some(BudgetKind::Cost | BudgetKind::DailyCost)) => 24,
            (AgentState::BudgetExceeded, Some(BudgetKind::Idle)) => 26,
            (state, _) => state.wait_code(),
        }
    }

    /// Ended, and (for an automatic merge) its merge settled: what
    /// `corral wait` waits for.
    pub fn is_done(&self) -> bool {
        if !self.state.is_terminal() {
            return false;
        }
        let auto = self.merge.policy == crate::config::MergePolicy::Auto && self.state == AgentState::Succeeded;
        match &self.merge_state {
            Some(merge) => merge.is_settled(),
            None => !auto,
        }
    }

    /// True when a JSON-lines agent has answered everything it was given:
    /// its input should be closed so the CLI ends.
    pub fn input_done(&self) -> bool {
        self.harness.delivery() == corral_harness::launch::Delivery::Stdin
            && self.results > 0
            && self.idle
            && !self.turn_pending
            && !self.delivered_since_result
            && self.pending_messages.is_empty()
            && !self.input_closed
            && !self.state.is_terminal()
    }

    /// Whether it counts against `[supervisor] max_threads`: every agent
    /// but a run's driver, which only waits for the agents it spawns (were
    /// it to take a slot, `max_threads = 1` could never run a run).
    pub fn holds_slot(&self) -> bool {
        self.command.get(1).is_none_or(|word| word != RUN_DRIVER_COMMAND)
    }

    /// Seconds the agent has run (until now, or until it ended).
    pub fn runtime_secs(&self, now: DateTime<Utc>) -> Option<f64> {
        let start = self.started_at?;
        let end = self.ended_at.unwrap_or(now);
        Some((end - start).num_milliseconds().max(0) as f64 / 1000.0)
    }
}

/// How an ended agent's exit status maps to a terminal state.
/// How an ended agent's exit maps to a terminal state. A budget stop wins,
/// then a stop on request. An agent whose CLI reports results (a
/// structured harness) succeeded only if it exited 0 after a successful
/// result; any other agent, if it exited 0.
pub fn classify_exit(
    code: Option<i32>,
    signal: Option<i32>,
    stop_requested: bool,
    result: Option<&ResultSummary>,
    expects_result: bool,
    stopped_for: Option<BudgetKind>,
) -> AgentState {
    match stopped_for {
        Some(BudgetKind::Wall) => return AgentState::TimedOut,
        Some(_) => return AgentState::BudgetExceeded,
        None => {}
    }
    if stop_requested {
        return AgentState::Stopped;
    }
    match (code, signal, result) {
        (Some(0), _, Some(result)) if !result.success => AgentState::Failed,
        (Some(0), _, None) if expects_result => AgentState::Failed,
        (Some(0), _, _) => AgentState::Succeeded,
        _ => AgentState::Failed,
    }
}

/// All agents, folded from a journal.
///
/// Memory follows live agents, not history: an agent that is done (ended,
/// its merge settled) and has nothing below it still going can be put
/// away, leaving a [`DoneAgent`] summary here and its whole record in a
/// file ([`Spot`] says where; the daemon's store owns that file). Every
/// address is in `agents` or put away, never both. A put-away record must
/// be brought back ([`AgentTable::bring_back`]) before an event of its is
/// applied: [`AgentTable::put_away_for`] names which an event needs.
#[derive(Debug, Default, Clone)]
pub struct AgentTable {
    /// The records held in memory: every agent not done yet (and every
    /// ancestor of one), and done agents not put away yet.
    pub agents: BTreeMap<Address, AgentRecord>,
    /// Done agents put away: what lists, budgets and name checks need.
    done: BTreeMap<Address, DoneAgent>,
    /// The largest agent id seen, so new ids never reuse a folder.
    pub last_id: u64,
    /// What the repository spent each day (local date, `YYYY-MM-DD`): the
    /// journal is kept, so a daemon restart or a second cron run the same
    /// day starts from the same figures.
    pub daily: BTreeMap<String, DailySpend>,
}

/// What stays in memory of an agent put away: enough to list it, count
/// its spend in its ancestors' budgets and keep its name, and where its
/// whole record is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoneAgent {
    pub id: u64,
    pub state: AgentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
    #[serde(default)]
    pub tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cost: f64,
    pub spot: Spot,
}

/// Where a put-away record is: its bytes in the store's file of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spot {
    pub offset: u64,
    pub len: u32,
}

impl Spot {
    pub fn end(self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

impl DoneAgent {
    pub fn of(record: &AgentRecord, spot: Spot) -> DoneAgent {
        DoneAgent {
            id: record.id,
            state: record.state,
            ended_at: record.ended_at,
            removed: record.removed,
            tokens: record.usage.total(),
            output_tokens: record.usage.output,
            cost: record.cost_usd.unwrap_or(0.0),
            spot,
        }
    }
}

/// One agent of the table, held or put away.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    Held(&'a AgentRecord),
    Away(&'a Address, &'a DoneAgent),
}

impl Entry<'_> {
    pub fn address(&self) -> &Address {
        match self {
            Entry::Held(record) => &record.address,
            Entry::Away(address, _) => address,
        }
    }

    pub fn id(&self) -> u64 {
        match self {
            Entry::Held(record) => record.id,
            Entry::Away(_, done) => done.id,
        }
    }

    pub fn removed(&self) -> bool {
        match self {
            Entry::Held(record) => record.removed,
            Entry::Away(_, done) => done.removed,
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Entry::Held(record) => record.is_done(),
            Entry::Away(..) => true,
        }
    }

    pub fn ended_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Entry::Held(record) => record.ended_at,
            Entry::Away(_, done) => done.ended_at,
        }
    }
}

/// One day's spend over all agents, and the daily budgets already warned
/// about or spent that day.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct DailySpend {
    pub tokens: u64,
    pub cost: f64,
    pub warned: Vec<BudgetKind>,
    pub exceeded: Vec<BudgetKind>,
}

/// The local date of a timestamp, as the daily budget counts days.
pub fn day_of(ts: DateTime<Utc>) -> String {
    ts.with_timezone(&chrono::Local).format("%Y-%m-%d").to_string()
}

impl AgentTable {
    /// Applies one event. Records it touches that were put away must have
    /// been brought back first ([`AgentTable::put_away_for`]); were one
    /// not, its event is left out of the fold rather than misread.
    pub fn apply(&mut self, event: &Event) {
        if let EventBody::Spawned { id, .. } = &event.body {
            self.last_id = self.last_id.max(*id);
            if let Some(record) = AgentRecord::from_spawned(event) {
                self.done.remove(&record.address);
                self.agents.insert(record.address.clone(), record);
            }
            return;
        }
        match &event.body {
            EventBody::BudgetWarning { kind, .. } if event.agent.is_none() => {
                self.daily.entry(day_of(event.ts)).or_default().warned.push(*kind);
            }
            EventBody::BudgetExceeded { kind, .. } if event.agent.is_none() => {
                self.daily.entry(day_of(event.ts)).or_default().exceeded.push(*kind);
            }
            EventBody::ModelCall { usage, cost_usd, .. } => {
                let agent = event.agent.as_ref().and_then(|a| self.agents.get(a));
                // The agent's first priced call replaces the cost its CLI
                // reported (the day has that already): the day gets the growth.
                let (priced, previous) = agent.map_or((true, None), |a| (a.calls_priced, a.cost_usd));
                let day = self.daily.entry(day_of(event.ts)).or_default();
                day.tokens = day.tokens.saturating_add(usage.total());
                if let Some(cost) = cost_usd {
                    let grown = if priced { *cost } else { (cost - previous.unwrap_or(0.0)).max(0.0) };
                    day.cost = crate::model::budget::cost_sum(day.cost, grown);
                }
            }
            EventBody::Usage { delta, cost_usd, .. } => {
                let agent = event.agent.as_ref().and_then(|a| self.agents.get(a));
                let previous = agent.and_then(|a| a.cost_usd);
                // A proxy-metered agent's tokens come from its calls; its
                // CLI's cost, until a call is priced.
                let (proxied, priced) =
                    agent.map_or((false, false), |a| (a.meter == crate::model::budget::Meter::Proxy, a.calls_priced));
                let day = self.daily.entry(day_of(event.ts)).or_default();
                if !proxied {
                    day.tokens = day.tokens.saturating_add(delta.total());
                }
                if !(proxied && priced) {
                    day.cost = crate::model::budget::cost_sum(
                        day.cost,
                        (cost_usd.unwrap_or(0.0) - previous.unwrap_or(0.0)).max(0.0),
                    );
                }
            }
            _ => {}
        }
        let Some(address) = &event.agent else { return };
        if let EventBody::SpawnFailed { .. } = &event.body {
            // A failed spawn leaves nothing behind, the address included.
            if self.agents.get(address).is_some_and(|a| a.state == AgentState::Starting) {
                self.agents.remove(address);
            }
            return;
        }
        if let Some(record) = self.agents.get_mut(address) {
            record.apply(event);
        }
        // A child's notice waits in its parent's messages, delivered like
        // one; its id is the child's, so it takes none of the parent's own
        // message numbers.
        if let EventBody::NoticeSent { message_id, to, text, .. } = &event.body {
            let parent = Address::parse(to).ok().and_then(|to| self.agents.get_mut(&to));
            if let Some(parent) = parent {
                if !parent.pending_messages.iter().any(|m| &m.message_id == message_id) {
                    parent.pending_messages.push(PendingMessage {
                        message_id: message_id.clone(),
                        from: address.to_string(),
                        text: text.clone(),
                        notice: true,
                    });
                }
            }
        }
    }

    /// The held agent and every held agent below it, parents before
    /// children (every agent not done yet is held).
    pub fn subtree(&self, top: &Address) -> Vec<&AgentRecord> {
        self.agents.values().filter(|a| a.address.is_within(top)).collect()
    }

    /// How many agents there are, held or put away.
    pub fn len(&self) -> usize {
        self.agents.len() + self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The agent at `address`, held or put away.
    pub fn entry(&self, address: &Address) -> Option<Entry<'_>> {
        match self.agents.get(address) {
            Some(record) => Some(Entry::Held(record)),
            None => self.done.get_key_value(address).map(|(a, done)| Entry::Away(a, done)),
        }
    }

    /// Every agent from `from` on, held or put away, in address order.
    pub fn entries_from<'a>(&'a self, from: Bound<&'a Address>) -> impl Iterator<Item = Entry<'a>> + 'a {
        let mut held = self.agents.range::<Address, _>((from, Bound::Unbounded)).peekable();
        let mut away = self.done.range::<Address, _>((from, Bound::Unbounded)).peekable();
        std::iter::from_fn(move || match (held.peek(), away.peek()) {
            (Some((h, _)), Some((a, _))) if a < h => away.next().map(|(a, done)| Entry::Away(a, done)),
            (Some(_), _) => held.next().map(|(_, record)| Entry::Held(record)),
            (None, _) => away.next().map(|(a, done)| Entry::Away(a, done)),
        })
    }

    /// Every agent, held or put away, in address order.
    pub fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        self.entries_from(Bound::Unbounded)
    }

    /// The put-away agents within `top`.
    pub fn away_within<'a>(&'a self, top: &'a Address) -> impl Iterator<Item = (&'a Address, &'a DoneAgent)> + 'a {
        self.done.range::<Address, _>((Bound::Included(top), Bound::Unbounded)).take_while(|(a, _)| a.is_within(top))
    }

    /// The put-away agents, in address order.
    pub fn away(&self) -> impl Iterator<Item = (&Address, &DoneAgent)> {
        self.done.iter()
    }

    /// An agent holds the name `address` (one `gc` removed frees it).
    pub fn name_taken(&self, address: &Address) -> bool {
        self.entry(address).is_some_and(|e| !e.removed())
    }

    /// The put-away records `event` needs back before it is applied: its
    /// agent's, the parent a notice goes to, and for a spawn every
    /// ancestor (an agent with one not done below it is never put away).
    pub fn put_away_for(&self, event: &Event) -> Vec<(Address, Spot)> {
        let mut wanted: Vec<Address> = Vec::new();
        if let Some(agent) = &event.agent {
            match &event.body {
                EventBody::Spawned { .. } => wanted.extend(std::iter::successors(agent.parent(), Address::parent)),
                _ => wanted.push(agent.clone()),
            }
        }
        if let EventBody::NoticeSent { to, .. } = &event.body {
            wanted.extend(Address::parse(to).ok());
        }
        wanted.into_iter().filter_map(|a| self.done.get(&a).map(|done| (a, done.spot))).collect()
    }

    /// Holds a put-away record again.
    pub fn bring_back(&mut self, record: AgentRecord) {
        self.done.remove(&record.address);
        self.agents.insert(record.address.clone(), record);
    }

    /// Whether the held agent at `address` may be put away: it is done,
    /// and so is every held agent below it.
    pub fn can_put_away(&self, address: &Address) -> bool {
        let mut subtree = self.agents.range::<Address, _>((Bound::Included(address), Bound::Unbounded));
        match subtree.next() {
            Some((a, record)) if a == address && record.is_done() => {}
            _ => return false,
        }
        subtree.take_while(|(a, _)| a.is_within(address)).all(|(_, record)| record.is_done())
    }

    /// Puts the held record at `address` away, its whole record written
    /// at `spot`; returns false (and changes nothing) when not held.
    pub fn put_away(&mut self, address: &Address, spot: Spot) -> bool {
        let Some(record) = self.agents.remove(address) else { return false };
        self.done.insert(record.address.clone(), DoneAgent::of(&record, spot));
        true
    }

    /// A summary read back from a snapshot.
    pub fn insert_away(&mut self, address: Address, done: DoneAgent) {
        self.agents.remove(&address);
        self.done.insert(address, done);
    }
}

#[cfg(test)]
mod tests;
