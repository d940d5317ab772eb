//! How agents read to a person: the `ps` tree, one agent's line for
//! `view`, `stop` and `wait`, and the counts and times in them.

use chrono::Utc;

use crate::model::lifecycle::{AgentRecord, MergeState};

/// One line saying where an agent is and how it ended.
pub fn describe(agent: &AgentRecord) -> String {
    let mut text = format!("{} {}", agent.address, agent.state.as_str());
    if let Some(pid) = agent.pid {
        text.push_str(&format!(" pid {pid}"));
    }
    if let Some(runtime) = agent.runtime_secs(Utc::now()) {
        text.push_str(&format!(" runtime {}", human_secs(runtime)));
    }
    match (agent.exit_code, agent.signal) {
        (Some(code), _) => text.push_str(&format!(" exit {code}")),
        (None, Some(signal)) => text.push_str(&format!(" signal {signal}")),
        _ => {}
    }
    if agent.usage.total() > 0 {
        let u = agent.usage;
        text.push_str(&format!(
            " tokens in {} out {} cache read {} write {}",
            u.input, u.output, u.cache_read, u.cache_write
        ));
    }
    if let Some(cost) = agent.cost_usd {
        text.push_str(&format!(" cost ${cost:.4}"));
    }
    if let Some(reason) = &agent.reason {
        text.push_str(&format!(" ({reason})"));
    }
    match &agent.merge_state {
        Some(MergeState::Merged { commit, commits }) => {
            let short = &commit[..commit.len().min(10)];
            text.push_str(&format!(
                "; merged into {} at {short} ({commits} commits)",
                agent.merge.target.as_deref().unwrap_or("?")
            ))
        }
        Some(MergeState::Conflict { files }) => text.push_str(&format!("; merge conflict in {}", files.join(", "))),
        Some(MergeState::GateFailed { code, output }) => {
            let tail: String =
                output.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(" | ");
            text.push_str(&format!("; gate failed (exit {}): {tail}", code.map_or("?".into(), |c| c.to_string())))
        }
        Some(MergeState::Waiting { why, .. }) => text.push_str(&format!("; merge waiting: {why}")),
        Some(MergeState::Refused { why }) => text.push_str(&format!("; merge refused: {why}")),
        Some(other) => text.push_str(&format!("; merge {}", other.as_str())),
        None => {}
    }
    text
}

/// The state, with readiness while running and the restart count.
fn state_cell(agent: &AgentRecord) -> String {
    let mut text = match &agent.merge_state {
        Some(merge) => merge.as_str().to_string(),
        None => agent.state.as_str().to_string(),
    };
    if agent.state == crate::model::lifecycle::AgentState::Running && agent.paused.is_some() {
        text = "paused".to_string();
    } else if agent.state == crate::model::lifecycle::AgentState::Running && !agent.ready {
        text.push_str(" (not ready)");
    }
    if agent.restarts > 0 {
        text.push_str(&format!(" ↻{}", agent.restarts));
    }
    text
}

/// "used", "used/limit", or "-".
fn spend_cell(used: Option<String>, limit: Option<String>) -> String {
    match (used, limit) {
        (used, Some(limit)) => format!("{}/{limit}", used.unwrap_or_else(|| "0".into())),
        (Some(used), None) => used,
        (None, None) => "-".into(),
    }
}

/// 1234 -> 1.2k, 1234567 -> 1.2M.
pub fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

pub fn human_secs(secs: f64) -> String {
    let whole = secs as u64;
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if whole < 3600 {
        format!("{}m{:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h{:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// What the agent runs under, as enforced: `workspace-write`, `read-only
/// net:none`, `full` (unrestricted, whether asked for or not); `!` when
/// something asked for is not enforced (`sandbox_fallback = "warn"`).
fn sandbox_cell(agent: &AgentRecord) -> String {
    match &agent.enforced {
        Some(enforced) => enforced.summary(),
        None => "full".into(),
    }
}

/// `corral ps`: the tree, children indented under their parents.
pub fn render_tree(agents: &[AgentRecord]) -> String {
    let now = Utc::now();
    let header = ["ADDRESS", "STATE", "PID", "RUNTIME", "EXIT", "TOKENS", "COST", "METER", "SANDBOX", "TASK"];
    let mut rows = vec![header.map(String::from)];
    for agent in agents {
        let indent = "  ".repeat(agent.address.depth().saturating_sub(1));
        let exit = match (agent.exit_code, agent.signal) {
            (Some(code), _) => code.to_string(),
            (None, Some(signal)) => format!("sig{signal}"),
            _ => "-".into(),
        };
        let mut task: String = agent.task.chars().take(48).collect();
        if agent.task.chars().count() > 48 {
            task.push('…');
        }
        rows.push([
            format!("{indent}{}", agent.address),
            state_cell(agent),
            agent.pid.map_or("-".into(), |p| p.to_string()),
            agent.runtime_secs(now).map_or("-".into(), human_secs),
            exit,
            spend_cell(
                (agent.usage.total() > 0).then(|| human_count(agent.usage.total())),
                agent.budget.tokens.map(human_count),
            ),
            spend_cell(agent.cost_usd.map(|c| format!("${c:.4}")), agent.budget.cost.map(|c| format!("${c:.2}"))),
            agent.meter.as_str().to_string(),
            sandbox_cell(agent),
            task,
        ]);
    }
    let mut widths = [0usize; 10];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == row.len() - 1 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if agents.is_empty() {
        out.push_str("(no agents)\n");
    }
    out
}
