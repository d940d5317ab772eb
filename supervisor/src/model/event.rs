//! The event schema: one JSON object a line in the journal and on
//! `corral events`.
//!
//! ```json
//! {"v":1,"seq":42,"ts":"2026-11-21T10:00:00.000Z","agent":"/root/api","parent":"/root",
//!  "task":"t-7","type":"exited","state":"succeeded","code":0}
//! ```
//!
//! Every change to an agent is an event; the daemon's state is a fold over
//! the journal (see `lifecycle`). `v` is bumped when a field changes
//! meaning; new fields and new types may appear without a bump, so readers
//! must ignore what they do not know.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use corral_harness::{Harness, HarnessEvent, TokenUsage};
use serde::{Deserialize, Serialize};

use crate::model::address::Address;
use crate::model::budget::{Budget, BudgetKind};
use crate::model::restart::RestartSpec;
use corral_probes::ProbeSet;

pub const EVENT_VERSION: u32 = 1;

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub v: u32,
    pub seq: u64,
    pub ts: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened.
// `Spawned` carries the agent's spec once per agent; boxing it would make
// every match on it noisier for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// The daemon started (and re-adopted what was running).
    DaemonStarted {
        pid: u32,
    },
    /// The journal was damaged (a line that is not a whole event in
    /// sequence, not the last one): it went on from the whole lines before
    /// `line`, and the `bytes` from there on were kept in `moved_to`.
    JournalRepaired {
        line: usize,
        reason: String,
        moved_to: PathBuf,
        bytes: u64,
    },
    /// The journal could be written again after `failed` appends failed
    /// since `since` (the first error: `error`). Changes asked for
    /// meanwhile were refused; `dropped_output` output events were left
    /// out.
    JournalResumed {
        since: DateTime<Utc>,
        error: String,
        failed: u64,
        #[serde(default)]
        dropped_output: u64,
    },
    /// An agent was accepted; its worktree and branch are being made.
    Spawned {
        id: u64,
        /// Which agent CLI this is (see `corral_harness::launch`).
        #[serde(default)]
        harness: Harness,
        task_text: String,
        command: Vec<String>,
        branch: String,
        worktree: PathBuf,
        base: String,
        /// The agent's budget (covering its subtree).
        #[serde(default, skip_serializing_if = "Budget::is_empty")]
        budget: Budget,
        /// Seconds between SIGTERM and SIGKILL when corral stops it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_secs: Option<f64>,
        #[serde(default, skip_serializing_if = "ProbeSet::is_empty")]
        probes: ProbeSet,
        #[serde(default, skip_serializing_if = "is_never")]
        restart: RestartSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        #[serde(default)]
        merge: crate::model::lifecycle::MergeSpec,
        /// Its sandbox: the mode (the `sandbox` key, `read-only` and so on,
        /// as before), and beside it `network`, `limits` and what the kernel
        /// was made to enforce (`enforced`: the Landlock ABI, the rules,
        /// each limit and its mechanism).
        #[serde(flatten)]
        sandbox: Option<crate::sys::sandbox::SandboxSpec>,
        /// What it tells its parent agent (`model::notify`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notify: Option<crate::model::notify::Notify>,
        /// Where its usage is counted: `stream` (its CLI's output) or
        /// `proxy` (corral's metering proxy, on the wire).
        #[serde(default)]
        meter: crate::model::budget::Meter,
    },
    /// Over `max_threads`: the agent waits in Pending for a slot.
    Queued {},
    /// The agent could not be started; nothing of it is left.
    SpawnFailed {
        reason: String,
    },
    /// The agent process runs under its monitor.
    Started {
        pid: u32,
        monitor_pid: u32,
    },
    /// A restarted daemon found the agent still running.
    Adopted {
        pid: u32,
        monitor_pid: u32,
    },
    /// A line the agent printed (ANSI removed, shortened). `offset` is where
    /// the line ends in the agent's output log; `skipped` counts lines left
    /// out since the previous output event (the log keeps every byte).
    Output {
        text: String,
        offset: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        skipped: u64,
    },
    /// The agent CLI began a session (from its own output).
    SessionStarted {
        session_id: Option<String>,
        model: Option<String>,
        offset: u64,
    },
    /// What the agent says it is doing (assistant text, reasoning).
    Progress {
        text: String,
        offset: u64,
        #[serde(default, skip_serializing_if = "is_zero")]
        skipped: u64,
    },
    /// The agent called a tool; `summary` is a short form of its input.
    ToolUse {
        id: Option<String>,
        name: String,
        summary: String,
        offset: u64,
    },
    ToolResult {
        id: Option<String>,
        is_error: bool,
        summary: String,
        offset: u64,
    },
    /// Token usage: `delta` since the previous usage event, `total` for the
    /// agent so far. `settled` marks the CLI's own final figures.
    Usage {
        delta: TokenUsage,
        total: TokenUsage,
        cost_usd: Option<f64>,
        settled: bool,
        offset: u64,
        /// For usage read from the CLI's own session log (Gemini CLI's),
        /// where in that log it was read to: a restarted daemon reads the
        /// log again to there without counting it twice.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage_log_offset: Option<u64>,
    },
    /// One model call through the agent's metering proxy: what it was
    /// charged (from the wire, or its estimate when `flag` says why), or
    /// why corral refused it (`refused`: it never went upstream).
    ModelCall {
        /// The call's number, per agent, from 1.
        call: u64,
        provider: crate::proxy::Provider,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        status: u16,
        usage: TokenUsage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_usd: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flag: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
        estimate_input: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output_cap: Option<u64>,
        ttfb_ms: f64,
        duration_ms: f64,
    },
    /// The agent CLI's final word on its task.
    Result {
        success: bool,
        reason: Option<String>,
        text: Option<String>,
        session_id: Option<String>,
        offset: u64,
    },
    /// A message was accepted for the agent (persisted before delivery).
    MessageSent {
        message_id: String,
        from: String,
        to: String,
        text: String,
        /// The sender's key for it, if it gave one (a retried send finds
        /// it by that).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        key: Option<String>,
    },
    /// A notice from a child (the event's agent) for its parent agent
    /// (`to`), queued in the parent's messages (see `model::notify`).
    NoticeSent {
        message_id: String,
        to: String,
        kind: crate::model::notify::NoticeKind,
        text: String,
    },
    /// The notice reached the parent's input.
    NoticeDelivered {
        message_id: String,
        from: String,
    },
    /// The message reached the agent's input.
    MessageDelivered {
        message_id: String,
    },
    /// Corral closed the agent's input: its task is done and no message waits.
    InputClosed {},
    /// A budget is near its limit (the agent's own, covering its subtree).
    BudgetWarning {
        kind: BudgetKind,
        used: f64,
        limit: f64,
    },
    /// A budget with `on_exceeded = "pause"` is spent (`owner`'s, its
    /// own or an ancestor's): the agent is frozen, no call of it goes
    /// upstream and none of its processes runs, until the budget is raised.
    Paused {
        kind: BudgetKind,
        used: f64,
        limit: f64,
        owner: crate::model::address::Address,
    },
    /// The budget that paused the agent was raised: it runs again, and the
    /// call it was held at goes on.
    Resumed {
        kind: BudgetKind,
        limit: f64,
    },
    /// `corral budget` raised this agent's limit of `kind` by `added`, to
    /// `limit`; `by` is who asked (an address, `/root` for a person).
    BudgetRaised {
        kind: BudgetKind,
        added: f64,
        limit: f64,
        by: String,
    },
    /// A budget is spent: the agent and its subtree are being stopped.
    BudgetExceeded {
        kind: BudgetKind,
        used: f64,
        limit: f64,
    },
    /// A probe's result changed something: passed or failed after the
    /// opposite, ready or not ready, or a kill (`change` is `kill`).
    Probe {
        probe: String,
        kind: String,
        change: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<String>,
        timed_out: bool,
        message: String,
        consecutive_successes: u32,
        consecutive_failures: u32,
    },
    /// The agent's process ended and, by its restart policy, runs again
    /// after `backoff_secs`. `count` only grows.
    Restarted {
        count: u32,
        reason: String,
        backoff_secs: f64,
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// The agent got its next task (`task`, the event's task id); a new run
    /// of `command` starts in the same worktree.
    Assigned {
        task_text: String,
        command: Vec<String>,
    },
    /// A task waits for the busy agent to finish (`corral assign --queue`).
    TaskQueued {
        task_id: String,
        task_text: String,
    },
    /// The agent's branch joined the merge queue, to go in by `strategy`
    /// (`corral merge --strategy`; none: the agent's own). Journals from
    /// before it was said have none.
    MergeQueued {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strategy: Option<crate::git::merge::Strategy>,
    },
    /// Its merge is computed and about to move `target` from `old` to `new`
    /// (journaled first, so a restarted daemon can finish or redo it).
    MergeStarted {
        target: String,
        old: String,
        new: String,
        strategy: crate::git::merge::Strategy,
    },
    /// Its work is on the target (`commits` new to it; 0: nothing to merge).
    Merged {
        target: String,
        commit: String,
        commits: usize,
        /// Files a crash left cut short in the checkout, copied here before
        /// the checkout was finished (nothing is lost).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rescued: Vec<PathBuf>,
        /// Files the person changed in the checkout between a crash and the
        /// restart that finished the merge: left as they were.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        kept: Vec<String>,
    },
    /// Its branch and the target change the same lines; nothing changed.
    Conflict {
        files: Vec<String>,
    },
    /// The gate failed in its worktree; nothing merged.
    GateFailed {
        code: Option<i32>,
        output: String,
    },
    /// The target is checked out with uncommitted changes; corral touches
    /// nothing and tries again when it is clean.
    MergeWaiting {
        why: String,
        files: Vec<String>,
    },
    /// The strategy cannot merge it (fast-forward only, a rebase that
    /// would drop changes); nothing changed.
    MergeRefused {
        why: String,
    },
    /// Someone (or a budget: `budget` names it) asked the agent to stop.
    StopRequested {
        grace_secs: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        budget: Option<BudgetKind>,
    },
    /// The agent's last process is gone.
    Exited {
        state: crate::model::lifecycle::AgentState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// `corral gc` removed the agent's worktree; its branch stays.
    Removed {
        worktree: PathBuf,
        /// The branch gc deleted too: merged (or forced), never otherwise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deleted_branch: Option<String>,
    },
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_never(spec: &RestartSpec) -> bool {
    spec.policy == crate::model::restart::RestartPolicy::Never
}

impl EventBody {
    /// The event's `type` field as written in JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::DaemonStarted { .. } => "daemon_started",
            EventBody::JournalRepaired { .. } => "journal_repaired",
            EventBody::JournalResumed { .. } => "journal_resumed",
            EventBody::Spawned { .. } => "spawned",
            EventBody::SpawnFailed { .. } => "spawn_failed",
            EventBody::Queued {} => "queued",
            EventBody::Started { .. } => "started",
            EventBody::Adopted { .. } => "adopted",
            EventBody::Output { .. } => "output",
            EventBody::StopRequested { .. } => "stop_requested",
            EventBody::Exited { .. } => "exited",
            EventBody::Removed { .. } => "removed",
            EventBody::SessionStarted { .. } => "session_started",
            EventBody::Progress { .. } => "progress",
            EventBody::ToolUse { .. } => "tool_use",
            EventBody::ToolResult { .. } => "tool_result",
            EventBody::Usage { .. } => "usage",
            EventBody::ModelCall { .. } => "model_call",
            EventBody::Result { .. } => "result",
            EventBody::MessageSent { .. } => "message_sent",
            EventBody::MessageDelivered { .. } => "message_delivered",
            EventBody::NoticeSent { .. } => "notice_sent",
            EventBody::NoticeDelivered { .. } => "notice_delivered",
            EventBody::InputClosed {} => "input_closed",
            EventBody::BudgetWarning { .. } => "budget_warning",
            EventBody::Probe { .. } => "probe",
            EventBody::Assigned { .. } => "assigned",
            EventBody::TaskQueued { .. } => "task_queued",
            EventBody::MergeQueued { .. } => "merge_queued",
            EventBody::MergeStarted { .. } => "merge_started",
            EventBody::Merged { .. } => "merged",
            EventBody::Conflict { .. } => "conflict",
            EventBody::GateFailed { .. } => "gate_failed",
            EventBody::MergeWaiting { .. } => "merge_waiting",
            EventBody::MergeRefused { .. } => "merge_refused",
            EventBody::Restarted { .. } => "restarted",
            EventBody::BudgetExceeded { .. } => "budget_exceeded",
            EventBody::Paused { .. } => "paused",
            EventBody::Resumed { .. } => "resumed",
            EventBody::BudgetRaised { .. } => "budget_raised",
        }
    }

    /// Where in the agent's output log the line behind this event ends.
    pub fn log_offset(&self) -> Option<u64> {
        match self {
            EventBody::Output { offset, .. }
            | EventBody::SessionStarted { offset, .. }
            | EventBody::Progress { offset, .. }
            | EventBody::ToolUse { offset, .. }
            | EventBody::ToolResult { offset, .. }
            | EventBody::Usage { offset, .. }
            | EventBody::Result { offset, .. } => Some(*offset),
            _ => None,
        }
    }

    /// The journal form of what a harness parser saw in the line ending at `offset`.
    pub fn from_harness(event: HarnessEvent, offset: u64) -> EventBody {
        match event {
            HarnessEvent::SessionStarted { session_id, model } => {
                EventBody::SessionStarted { session_id, model, offset }
            }
            HarnessEvent::Progress { text } => EventBody::Progress { text, offset, skipped: 0 },
            HarnessEvent::ToolUse { id, name, summary } => EventBody::ToolUse { id, name, summary, offset },
            HarnessEvent::ToolResult { id, is_error, summary } => {
                EventBody::ToolResult { id, is_error, summary, offset }
            }
            HarnessEvent::Usage { delta, total, cost_usd, settled } => {
                EventBody::Usage { delta, total, cost_usd, settled, offset, usage_log_offset: None }
            }
            HarnessEvent::Result { success, reason, text, session_id } => {
                EventBody::Result { success, reason, text, session_id, offset }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_flat_with_type_tag() {
        let event = Event {
            v: 1,
            seq: 7,
            ts: "2026-11-21T10:00:00Z".parse().unwrap(),
            agent: Some(Address::parse("/root/api").unwrap()),
            parent: Some(Address::root()),
            task: Some("t-1".into()),
            body: EventBody::Started { pid: 10, monitor_pid: 9 },
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""type":"started""#), "{json}");
        assert!(json.contains(r#""agent":"/root/api""#), "{json}");
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }
}
