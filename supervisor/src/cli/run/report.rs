//! A run's report and exit code, from its record and its agents' records:
//! pure (the caller gives the time), so the driver that writes it, the
//! client that prints it and `corral runs` all tell the same story.
//!
//! The exit code (README, "Exit codes"): 0 only if every agent succeeded
//! and, where it merges by itself, merged; else the largest `corral wait`
//! code among the agents ([`AgentRecord::wait_code`]); an agent the
//! daemon refused to spawn counts as failed (20); an agent skipped
//! because one it runs after failed adds nothing (the one that failed
//! does); an agent the run never got to counts as the run ended: stopped
//! 21, lost 22 (its driver died), budget 23, timed out 25. A run skipped
//! because another of its name was going exits [`RUN_SKIPPED`].

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::record::{NotRun, RunRecord, RunState, RUN_VERSION};
use crate::cli::commands::{human_count, human_secs};
use crate::config::MergePolicy;
use crate::model::lifecycle::{AgentRecord, AgentState, WAIT_TIMED_OUT};

/// `corral run`'s exit code when a run of the same name was still going
/// and the file says `overlap = "skip"`: the first after `wait`'s codes.
pub const RUN_SKIPPED: i32 = 31;

/// A run stopped on request before it started anything: `wait`'s code for
/// an agent stopped on request.
pub const STOPPED: i32 = 21;

/// The report: a row per agent of the file, and the totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub v: u32,
    pub run: String,
    pub file: PathBuf,
    pub address: String,
    pub state: RunState,
    pub code: i32,
    pub started: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<DateTime<Utc>>,
    pub runtime_secs: f64,
    pub agents: Vec<Row>,
    pub totals: Totals,
}

/// One agent of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub name: String,
    pub address: String,
    /// The agent's state (`succeeded`, `failed`, ...), or `skipped`,
    /// `refused` (the daemon would not spawn it), `waiting` (for the
    /// agents it runs after) or `not_started` (the run ended first).
    pub state: String,
    pub exit: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub runtime_secs: Option<f64>,
    pub tokens: u64,
    pub cost: Option<f64>,
    /// `merged`, `conflict`, `gate_failed`, ... or `manual` (waits for
    /// `corral merge`), `never`; `None` when nothing is to merge.
    pub merge: Option<String>,
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What this agent adds to the run's exit code.
    pub code: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub agents: usize,
    pub succeeded: usize,
    /// Ran (or were refused) and did not succeed.
    pub failed: usize,
    pub skipped: usize,
    /// Never started: the run ended (or was stopped) first.
    pub not_started: usize,
    pub tokens: u64,
    pub cost: f64,
}

/// The run's state: the record's once final; else, if its driver has
/// ended, how the driver ended (a stop, a budget, or an interruption).
pub fn run_state(record: &RunRecord, driver: Option<&AgentRecord>) -> RunState {
    if record.state.is_final() {
        return record.state;
    }
    match driver.map(|d| d.state) {
        Some(AgentState::Stopped) => RunState::Stopped,
        Some(AgentState::TimedOut) => RunState::TimedOut,
        Some(AgentState::BudgetExceeded) => RunState::BudgetExceeded,
        Some(state) if state.is_terminal() => RunState::Interrupted,
        _ => record.state,
    }
}

/// Builds the report from the record and the daemon's records (the
/// driver's and its children's; others are ignored), as of `now`.
pub fn build(record: &RunRecord, agents: &[AgentRecord], now: DateTime<Utc>) -> Report {
    let driver = agents.iter().find(|a| a.address.to_string() == record.address);
    let state = run_state(record, driver);
    let never_got_to = match state {
        RunState::Stopped => 21,
        RunState::Interrupted => 22,
        RunState::BudgetExceeded => 23,
        RunState::TimedOut => 25,
        _ => 0,
    };
    let mut rows = Vec::new();
    for planned in &record.plan.agents {
        let address = format!("{}/{}", record.address, planned.name);
        let agent = agents.iter().find(|a| a.address.to_string() == address);
        let row = match (agent, record.not_run.get(&planned.name)) {
            (Some(agent), _) => agent_row(&planned.name, agent, now),
            (None, Some(NotRun::Skipped { why })) => empty_row(&planned.name, &address, "skipped", Some(why), 0),
            (None, Some(NotRun::Refused { why, .. })) => empty_row(&planned.name, &address, "refused", Some(why), 20),
            (None, None) if state.is_final() || state == RunState::Interrupted => {
                empty_row(&planned.name, &address, "not_started", None, never_got_to)
            }
            (None, None) => empty_row(&planned.name, &address, "waiting", None, 0),
        };
        rows.push(row);
    }
    // Agents still running: of an interrupted run (its driver killed),
    // they say the run was interrupted, not that a wait timed out; they
    // have not failed.
    let live: std::collections::HashSet<String> = agents
        .iter()
        .filter(|a| !a.is_done() && a.address.parent().is_some_and(|p| p.to_string() == record.address))
        .map(|a| a.address.to_string())
        .collect();
    if state == RunState::Interrupted {
        for row in rows.iter_mut().filter(|r| live.contains(&r.address)) {
            row.code = never_got_to;
        }
    }
    let code = match state {
        RunState::Skipped => RUN_SKIPPED,
        _ => rows.iter().map(|r| r.code).max().unwrap_or(0),
    };
    let totals = Totals {
        agents: rows.len(),
        succeeded: rows.iter().filter(|r| r.state == "succeeded" && r.code == 0).count(),
        failed: rows
            .iter()
            .filter(|r| r.code != 0 && !matches!(r.state.as_str(), "waiting" | "skipped" | "not_started"))
            .filter(|r| !live.contains(&r.address))
            .count(),
        skipped: rows.iter().filter(|r| r.state == "skipped").count(),
        not_started: rows.iter().filter(|r| r.state == "not_started").count(),
        tokens: rows.iter().map(|r| r.tokens).sum(),
        // From 0.0: an empty f64 sum is -0.0.
        cost: rows.iter().filter_map(|r| r.cost).fold(0.0, crate::model::budget::cost_sum),
    };
    let end = record.ended.or_else(|| driver.and_then(|d| d.ended_at).filter(|_| state.is_final()));
    Report {
        v: RUN_VERSION,
        run: record.run.clone(),
        file: record.file.clone(),
        address: record.address.clone(),
        state,
        code,
        started: record.started,
        ended: end,
        runtime_secs: ((end.unwrap_or(now) - record.started).num_milliseconds().max(0) as f64) / 1000.0,
        agents: rows,
        totals,
    }
}

fn agent_row(name: &str, agent: &AgentRecord, now: DateTime<Utc>) -> Row {
    let merge = match (&agent.merge_state, agent.merge.policy) {
        (Some(merge), _) => Some(merge.as_str().to_owned()),
        (None, MergePolicy::Never) => Some("never".to_owned()),
        (None, MergePolicy::Manual) if agent.state == AgentState::Succeeded => Some("manual".to_owned()),
        (None, MergePolicy::Auto) if !agent.state.is_terminal() => Some("auto".to_owned()),
        (None, _) => None,
    };
    let code = match agent.is_done() {
        true => agent.wait_code(),
        false => WAIT_TIMED_OUT,
    };
    Row {
        name: name.to_owned(),
        address: agent.address.to_string(),
        state: agent.state.as_str().to_owned(),
        exit: agent.exit_code,
        signal: agent.signal,
        runtime_secs: agent.runtime_secs(now),
        tokens: agent.usage.total(),
        cost: agent.cost_usd,
        merge,
        branch: Some(agent.branch.clone()),
        reason: agent.reason.clone(),
        code,
    }
}

fn empty_row(name: &str, address: &str, state: &str, reason: Option<&String>, code: i32) -> Row {
    Row {
        name: name.to_owned(),
        address: address.to_owned(),
        state: state.to_owned(),
        exit: None,
        signal: None,
        runtime_secs: None,
        tokens: 0,
        cost: None,
        merge: None,
        branch: None,
        reason: reason.cloned(),
        code,
    }
}

/// One line about an agent for progress: `deps  succeeded  exit 0  1.2s  merged`.
pub fn row_line(row: &Row) -> String {
    let mut text = row.state.clone();
    if let Some(code) = row.exit {
        text.push_str(&format!(", exit {code}"));
    } else if let Some(signal) = row.signal {
        text.push_str(&format!(", signal {signal}"));
    }
    if let Some(secs) = row.runtime_secs {
        text.push_str(&format!(", {}", human_secs(secs)));
    }
    match row.merge.as_deref() {
        None | Some("never" | "auto") => {}
        Some("merged") => text.push_str(", merged"),
        Some(merge) => text.push_str(&format!(", merge {merge}")),
    }
    if let Some(reason) = &row.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}

/// The report as a table, for a person (and a cron mail).
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "run {}  {}  exit {}  {}  ({})\n",
        report.run,
        report.state.as_str(),
        report.code,
        human_secs(report.runtime_secs),
        report.file.display()
    );
    let header = ["AGENT", "STATE", "EXIT", "RUNTIME", "TOKENS", "COST", "MERGE", "BRANCH", "WHY"];
    let mut rows: Vec<[String; 9]> = vec![header.map(String::from)];
    for row in &report.agents {
        rows.push([
            row.name.clone(),
            row.state.clone(),
            match (row.exit, row.signal) {
                (Some(code), _) => code.to_string(),
                (None, Some(signal)) => format!("sig{signal}"),
                _ => "-".into(),
            },
            row.runtime_secs.map_or("-".into(), human_secs),
            if row.tokens > 0 { human_count(row.tokens) } else { "-".into() },
            row.cost.map_or("-".into(), |c| format!("${c:.4}")),
            row.merge.clone().unwrap_or_else(|| "-".into()),
            row.branch.clone().unwrap_or_else(|| "-".into()),
            row.reason.clone().unwrap_or_default(),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let t = &report.totals;
    let mut counts =
        format!("{} agents, {} succeeded, {} failed, {} skipped", t.agents, t.succeeded, t.failed, t.skipped);
    if t.not_started > 0 {
        counts.push_str(&format!(", {} not started", t.not_started));
    }
    out.push_str(&format!("total: {counts}; {} tokens; ${:.4}\n", human_count(t.tokens), t.cost));
    out
}
