//! Budgets: the checks after each usage event and on a clock, the daily
//! budget, the admission of proxied calls, pausing and raising (`corral
//! budget`), and prices for CLIs that report no cost.
//!
//! A spent budget stops its subtree, or, with `on_exceeded = "pause"` (for
//! tokens, output tokens and cost), pauses it: each agent gets a `paused`
//! event and its monitor freezes its processes; its proxy's calls are held
//! open, never sent, and decided again after each raise. A raise that
//! leaves the budget unspent journals `resumed` for each agent it paused
//! and thaws it; the held call then goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::agent::Control;
use super::Daemon;
use crate::daemon::journal::Draft;
use crate::model::address::Address;
use crate::model::budget::{cost_sum, BudgetKind, OnExceeded, Spend};
use crate::model::error::{Error, ErrorKind, Result};
use crate::model::event::EventBody;
use crate::model::lifecycle::{AgentRecord, AgentState, AgentTable};

pub(super) use crate::model::lifecycle::DEFAULT_GRACE_SECS;

/// What `scope` and every agent below it have spent in tokens and cost,
/// put-away agents included. (Time is each agent's own; the caller adds it.)
pub(super) fn subtree_spend(table: &AgentTable, scope: &Address) -> Spend {
    let mut spend = Spend::default();
    for agent in table.subtree(scope) {
        spend.tokens = spend.tokens.saturating_add(agent.usage.total());
        spend.output_tokens = spend.output_tokens.saturating_add(agent.usage.output);
        spend.cost = cost_sum(spend.cost, agent.cost_usd.unwrap_or(0.0));
    }
    for (_, done) in table.away_within(scope) {
        spend.tokens = spend.tokens.saturating_add(done.tokens);
        spend.output_tokens = spend.output_tokens.saturating_add(done.output_tokens);
        spend.cost = cost_sum(spend.cost, done.cost);
    }
    spend
}

/// Checks every budget that covers `address` (its own and each
/// ancestor's): warns once per budget and kind, and once a budget is spent
/// journals `budget_exceeded` and stops the budget's whole subtree.
pub(super) async fn enforce_budgets(daemon: &Arc<Daemon>, address: &Address) {
    enforce_budgets_with(daemon, address, 0).await
}

/// [`enforce_budgets`], counting `refused_tokens` more: the input of a
/// model call the proxy refused because it would not fit. A budget it
/// would have crossed is spent (the agent can make no call), and says so
/// with the tokens really used.
pub(super) async fn enforce_budgets_with(daemon: &Arc<Daemon>, address: &Address, refused_tokens: u64) {
    // The check and the commit of what it decides are one step: another
    // check waits, and then sees this one's `budget_exceeded`.
    let _checking = daemon.budget_checks.lock().await;
    let now = chrono::Utc::now();
    let mut drafts = Vec::new();
    let mut stops = Vec::new();
    let mut pauses: Vec<Address> = Vec::new();
    check_daily(daemon, &mut drafts, &mut stops);
    // How long each budget owner on the way up has been idle, read before
    // the table (the two are never held together).
    let idle: Vec<(Address, f64)> = {
        let activity = daemon.activity.lock().unwrap_or_else(|e| e.into_inner());
        std::iter::successors(Some(address.clone()), Address::parent)
            .filter_map(|a| activity.get(&a).map(|at| (a, at.elapsed().as_secs_f64())))
            .collect()
    };
    daemon.store.read(|table| {
        for owner_address in address.agents_up() {
            let Some(owner) = table.agents.get(&owner_address) else { continue };
            if owner.budget.is_empty() || owner.exceeded.is_some() {
                continue;
            }
            let mut spend = subtree_spend(table, &owner_address);
            spend.tokens = spend.tokens.saturating_add(refused_tokens);
            if !owner.state.is_terminal() {
                spend.wall_secs = owner.runtime_secs(now).unwrap_or(0.0);
                // A frozen agent prints nothing: that is not idleness.
                if owner.paused.is_none() {
                    spend.idle_secs = idle.iter().find(|(a, _)| *a == owner_address).map_or(0.0, |(_, secs)| *secs);
                }
            }
            for crossing in owner.budget.check(&spend) {
                let (kind, mut used, limit) = (crossing.kind, crossing.used, crossing.limit);
                if kind == BudgetKind::Tokens {
                    used -= refused_tokens as f64;
                }
                if crossing.exceeded && owner.budget.pauses(kind) {
                    for agent in table.subtree(&owner_address) {
                        // Paused once, by the nearest budget that is spent.
                        let paused = agent.paused.is_some() || pauses.contains(&agent.address);
                        if agent.state.is_terminal() || agent.stop_requested || paused {
                            continue;
                        }
                        let owner = owner_address.clone();
                        drafts.push(daemon.draft(agent, EventBody::Paused { kind, used, limit, owner }));
                        pauses.push(agent.address.clone());
                    }
                    break;
                } else if crossing.exceeded {
                    drafts.push(daemon.draft(owner, EventBody::BudgetExceeded { kind, used, limit }));
                    for agent in table.subtree(&owner_address) {
                        if agent.state.is_terminal() || agent.stop_requested {
                            continue;
                        }
                        let grace_secs = agent.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
                        drafts.push(daemon.draft(agent, EventBody::StopRequested { grace_secs, budget: Some(kind) }));
                        stops.push((agent.address.clone(), grace_secs));
                    }
                    break;
                } else if !owner.warned.contains(&kind) {
                    drafts.push(daemon.draft(owner, EventBody::BudgetWarning { kind, used, limit }));
                }
            }
        }
    });
    if drafts.is_empty() {
        return;
    }
    if let Err(err) = daemon.commit(drafts).await {
        tracing::error!("{address}: cannot journal a budget event: {err}");
    }
    // A budget is spent: its subtree stops (or freezes) even when the
    // journal could not say so (a guard fails closed).
    for (address, grace_secs) in stops {
        let _ = daemon.agents.control(&address, Control::Stop { grace_secs });
    }
    for address in pauses {
        let _ = daemon.agents.control(&address, Control::Pause);
    }
}

/// `corral budget ADDRESS --add-tokens N --add-cost USD`: raises the
/// agent's own limits (journaled as `budget_raised`, with who asked), then
/// resumes every agent that limit paused once its budget is no longer
/// spent. Refused for an agent that has ended or has no limit of that kind.
pub(super) async fn raise(
    daemon: &Arc<Daemon>,
    address: &str,
    add_tokens: Option<u64>,
    add_cost: Option<f64>,
    by: String,
) -> Result<AgentRecord> {
    if add_tokens.is_none() && add_cost.is_none() {
        return Err(Error::new(ErrorKind::BadBudget, "say what to add: --add-tokens N or --add-cost USD"));
    }
    if add_tokens == Some(0) || add_cost.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        return Err(Error::new(ErrorKind::BadBudget, "a raise must be a number greater than 0"));
    }
    let _checking = daemon.budget_checks.lock().await;
    let record = daemon.find(address)?;
    if record.state.is_terminal() {
        return Err(Error::new(
            ErrorKind::Refused,
            format!("{} is {}; only a live agent's budget can be raised", record.address, record.state.as_str()),
        ));
    }
    let mut drafts = Vec::new();
    let raises = [
        (BudgetKind::Tokens, add_tokens.map(|t| t as f64), record.budget.tokens.map(|t| t as f64), "--max-tokens"),
        (BudgetKind::Cost, add_cost, record.budget.cost, "--max-cost"),
    ];
    for (kind, added, current, flag) in raises {
        let Some(added) = added else { continue };
        let Some(current) = current else {
            return Err(Error::new(
                ErrorKind::Refused,
                format!(
                    "{} has no {} budget of its own to raise (one is set at spawn with {flag}, or a role's budget)",
                    record.address,
                    kind.as_str()
                ),
            ));
        };
        let limit = match kind {
            BudgetKind::Tokens => (current as u64).saturating_add(added as u64) as f64,
            _ => cost_sum(current, added),
        };
        drafts.push(daemon.draft(&record, EventBody::BudgetRaised { kind, added, limit, by: by.clone() }));
    }
    daemon.commit(drafts).await?;
    // What the raise lifted: the agents this budget paused, once none of
    // its pausing limits is spent, counting the largest call held (as its
    // admission does: a call whose input does not fit is not sent).
    let held = daemon.held_inputs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let resumes: Vec<(AgentRecord, BudgetKind, f64)> = daemon.store.read(|table| {
        let Some(owner) = table.agents.get(&record.address) else { return Vec::new() };
        let mut spend = subtree_spend(table, &record.address);
        let largest_held = held.iter().filter(|(a, _)| a.is_within(&record.address)).map(|(_, t)| *t).max();
        spend.tokens = spend.tokens.saturating_add(largest_held.map_or(0, |t| t.max(1)));
        let spent = owner.budget.check(&spend).into_iter().any(|c| c.exceeded && owner.budget.pauses(c.kind));
        if spent {
            return Vec::new();
        }
        table
            .subtree(&record.address)
            .into_iter()
            .filter_map(|agent| {
                let paused = agent.paused.as_ref().filter(|p| p.owner == record.address)?;
                let limit = match paused.kind {
                    BudgetKind::Tokens => owner.budget.tokens.map_or(paused.limit, |t| t as f64),
                    BudgetKind::OutputTokens => owner.budget.output_tokens.map_or(paused.limit, |t| t as f64),
                    _ => owner.budget.cost.unwrap_or(paused.limit),
                };
                Some((agent.clone(), paused.kind, limit))
            })
            .collect()
    });
    let drafts = resumes
        .iter()
        .map(|(agent, kind, limit)| daemon.draft(agent, EventBody::Resumed { kind: *kind, limit: *limit }));
    daemon.commit(drafts.collect()).await?;
    for (agent, _, _) in &resumes {
        touch(daemon, &agent.address);
        let _ = daemon.agents.control(&agent.address, Control::Resume);
    }
    daemon.budget_raised.notify_waiters();
    daemon.find(&record.address.to_string())
}

/// Prices usage from the price table in corral.toml (`[prices."MODEL"]`),
/// when the model is in it: usage the CLI reported no cost for gets the
/// table's, and usage it did gets the larger of the two. A CLI's own
/// figure can lag its tokens (Claude Code's comes with each turn's
/// result, so a long turn's live usage still carries the last turn's
/// cost) or say nothing in a number (opencode's 0 for a model its config
/// does not price): the table's figure for the tokens seen keeps a cost
/// budget from running blind.
pub(super) fn price_usage(daemon: &Daemon, record: &AgentRecord, bodies: &mut [EventBody]) {
    let config = daemon.config();
    let model = daemon.record(&record.address).and_then(|r| r.model).or_else(|| record.model.clone());
    let Some(price) = model.as_deref().and_then(|m| config.price(m)) else { return };
    for body in bodies {
        if let EventBody::Usage { total, cost_usd, .. } = body {
            let priced = price.cost(total);
            *cost_usd = Some(cost_usd.map_or(priced, |reported| reported.max(priced)));
        }
    }
}

/// Refuses a spawn once the repository's daily budget is spent.
pub(super) fn refuse_if_day_spent(daemon: &Daemon) -> Result<()> {
    let today = crate::model::lifecycle::day_of(chrono::Utc::now());
    let Some(day) = daemon.store.read(|table| table.daily.get(&today).cloned()) else { return Ok(()) };
    if let Some(kind) = day.exceeded.first() {
        let budget = daemon.config().budget.clone();
        let (used, limit) = match kind {
            BudgetKind::DailyCost => (format!("${:.4}", day.cost), format!("${:.4}", budget.daily_cost.unwrap_or(0.0))),
            _ => (day.tokens.to_string(), budget.daily_tokens.map_or("?".into(), |t| t.to_string())),
        };
        return Err(Error::new(
            ErrorKind::Refused,
            format!(
                "the repository's {} budget for {today} is spent ({used} of {limit}); it starts again tomorrow",
                kind.as_str()
            ),
        ));
    }
    Ok(())
}

/// The repository's daily budgets: warns once a day per kind, and once one
/// is spent stops every running agent and refuses new spawns until tomorrow.
pub(super) fn check_daily(daemon: &Daemon, drafts: &mut Vec<Draft>, stops: &mut Vec<(Address, f64)>) {
    let budget = daemon.config().budget.clone();
    if budget.daily_tokens.is_none() && budget.daily_cost.is_none() {
        return;
    }
    let today = crate::model::lifecycle::day_of(chrono::Utc::now());
    daemon.store.read(|table| check_day(daemon, table, &budget, &today, drafts, stops));
}

fn check_day(
    daemon: &Daemon,
    table: &AgentTable,
    budget: &crate::config::RepoBudget,
    today: &str,
    drafts: &mut Vec<Draft>,
    stops: &mut Vec<(Address, f64)>,
) {
    let day = table.daily.get(today).cloned().unwrap_or_default();
    if !day.exceeded.is_empty() {
        return;
    }
    let warn_at = budget.warn_at.unwrap_or(crate::model::budget::DEFAULT_WARN_AT);
    let limits = [
        (BudgetKind::DailyTokens, budget.daily_tokens.map(|t| t as f64), day.tokens as f64),
        (BudgetKind::DailyCost, budget.daily_cost, day.cost),
    ];
    for (kind, limit, used) in limits {
        let Some(limit) = limit else { continue };
        let repo_event = |body| Draft { agent: None, parent: None, task: None, body };
        if used >= limit {
            drafts.push(repo_event(EventBody::BudgetExceeded { kind, used, limit }));
            for agent in table.agents.values().filter(|a| !a.state.is_terminal() && !a.stop_requested) {
                let grace_secs = agent.grace_secs.unwrap_or(DEFAULT_GRACE_SECS);
                drafts.push(daemon.draft(agent, EventBody::StopRequested { grace_secs, budget: Some(kind) }));
                stops.push((agent.address.clone(), grace_secs));
            }
            return;
        }
        if used >= limit * warn_at && !day.warned.contains(&kind) {
            drafts.push(repo_event(EventBody::BudgetWarning { kind, used, limit }));
        }
    }
}

/// Time budgets need a clock: every quarter second, check the running
/// agents that have a wall or idle limit.
pub(super) fn start_budget_clock(daemon: &Arc<Daemon>) {
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if !daemon.state.dir.exists() {
                // The repository was deleted under us: nothing left to serve.
                tracing::warn!("{} is gone; the daemon exits", daemon.state.dir.display());
                if daemon.owns_process {
                    std::process::exit(0);
                }
                return;
            }
            let timed: Vec<Address> = daemon.store.read(|table| {
                let timed = |a: &&AgentRecord| {
                    a.state == AgentState::Running && (a.budget.wall.is_some() || a.budget.idle.is_some())
                };
                table.agents.values().filter(timed).map(|a| a.address.clone()).collect()
            });
            for address in timed {
                enforce_budgets(&daemon, &address).await;
            }
        }
    });
}

/// Notes that the agent did something (printed output, or started).
pub(super) fn touch(daemon: &Daemon, address: &Address) {
    daemon.activity.lock().unwrap_or_else(|e| e.into_inner()).insert(address.clone(), Instant::now());
}

/// How long an admission may wait for calls in flight under the same
/// budget to settle (below the monitor's own wait, so the agent hears the
/// daemon's answer, not its monitor's).
const ADMISSION_WAIT: Duration = Duration::from_secs(20);

/// The admission of one model call of a proxy-metered agent: what every
/// budget over it (its own, each ancestor's, the repository's day) has
/// left after what is spent and what calls in flight may still spend, and
/// the proxy's decision from that ([`crate::proxy::decide`]). A call that
/// fits only once calls in flight settle waits for them (bounded by
/// [`ADMISSION_WAIT`]); an admitted call holds its estimated input and its
/// output cap until it is reported. An agent stopped for a budget gets no
/// more calls.
pub(super) async fn admit(daemon: &Daemon, address: &Address, ask: &crate::proxy::Ask) -> crate::proxy::Decision {
    use crate::proxy::Decision;
    if let Some(message) = unpriced(daemon, address, ask) {
        return Decision::Refuse { message };
    }
    let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
    loop {
        let settled = daemon.calls_settled.notified();
        let (held, spent_only, spent_stopping) = {
            let mut in_flight = daemon.calls_in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let held = crate::proxy::decide(&headroom(daemon, address, &in_flight, true), ask);
            let paused = daemon.record(address).and_then(|r| r.paused);
            if let (Decision::Allow { max_output }, None) = (&held, &paused) {
                in_flight.entry(address.clone()).or_default().insert(ask.call, Admitted::new(ask.clone(), *max_output));
                daemon.held_inputs.lock().unwrap_or_else(|e| e.into_inner()).remove(address);
                return held;
            }
            if let Some(paused) = paused {
                let message =
                    format!("corral: {} is paused ({})", address, paused.kind.describe(paused.used, paused.limit));
                return Decision::Hold { message };
            }
            let nothing = HashMap::new();
            (
                held,
                crate::proxy::decide(&headroom(daemon, address, &nothing, true), ask),
                crate::proxy::decide(&headroom(daemon, address, &nothing, false), ask),
            )
        };
        // Refused on what is spent: final, unless only `pause` budgets
        // refuse it, which hold it. Refused only for what calls in flight
        // may spend: wait for one of them to settle.
        if let (Decision::Refuse { message }, Decision::Allow { .. }) = (&spent_only, &spent_stopping) {
            daemon.held_inputs.lock().unwrap_or_else(|e| e.into_inner()).insert(address.clone(), ask.estimate_input);
            return Decision::Hold { message: message.clone() };
        }
        if matches!(spent_only, Decision::Refuse { .. }) || tokio::time::Instant::now() >= deadline {
            return held;
        }
        let _ = tokio::time::timeout_at(deadline, settled).await;
    }
}

/// Why `ask` cannot go out under the cost budgets over `address`, if it
/// cannot: a cost budget covers the agent (its own, an ancestor's, the
/// repository's daily one) and the call's model has no price in
/// `[prices]`, so what the call costs could not be counted. A guard fails
/// closed: the call is refused, saying which price is missing.
fn unpriced(daemon: &Daemon, address: &Address, ask: &crate::proxy::Ask) -> Option<String> {
    let config = daemon.config();
    let (model, owner) = daemon.store.read(|table| {
        let model = ask.model.clone().or_else(|| table.agents.get(address).and_then(|r| r.model.clone()));
        let owner = std::iter::successors(Some(address.clone()), Address::parent)
            .filter(|a| !a.is_root())
            .find(|a| table.agents.get(a).is_some_and(|r| r.budget.cost.is_some()));
        (model, owner)
    });
    let which = match owner {
        Some(owner) => format!("the cost budget of {owner}"),
        None if config.budget.daily_cost.is_some() => "the repository's daily cost budget".to_owned(),
        None => return None,
    };
    match model {
        Some(model) if config.price(&model).is_some() => None,
        Some(model) => Some(format!(
            "corral: {which} cannot be kept for model {model:?}: it has no price in corral.toml's [prices] \
             (add [prices.\"{model}\"] with input and output, USD per million tokens); this call was not sent"
        )),
        None => Some(format!(
            "corral: {which} cannot be kept: the call names no model, so no price in corral.toml's [prices] \
             applies; this call was not sent"
        )),
    }
}

/// A call an earlier daemon admitted, still under way: held again under
/// the budgets, as if admitted here.
pub(super) fn readmit(daemon: &Daemon, address: &Address, ask: crate::proxy::Ask, max_output: Option<u64>) {
    let mut in_flight = daemon.calls_in_flight.lock().unwrap_or_else(|e| e.into_inner());
    in_flight.entry(address.clone()).or_default().entry(ask.call).or_insert_with(|| Admitted::new(ask, max_output));
}

/// A model call admitted and not yet reported.
#[derive(Debug, Clone)]
pub(super) struct Admitted {
    pub ask: crate::proxy::Ask,
    /// The output cap it was admitted with.
    pub output_cap: u64,
}

impl Admitted {
    /// An admission with `max_output`: the output cap it goes with is that,
    /// else the one it asked for, else the largest there is.
    pub(super) fn new(ask: crate::proxy::Ask, max_output: Option<u64>) -> Admitted {
        let output_cap = max_output.or(ask.asked_output).unwrap_or(crate::proxy::request::UNCAPPED_OUTPUT);
        Admitted { ask, output_cap }
    }

    /// What it may spend of a token budget.
    fn tokens(&self) -> u64 {
        self.ask.estimate_input.saturating_add(self.output_cap)
    }
}

/// A call's admission is over: it was reported, or (with no call named)
/// its agent ended; returns the admissions let go.
pub(super) fn settle_call(daemon: &Daemon, address: &Address, call: Option<u64>) -> Vec<Admitted> {
    let let_go = {
        let mut in_flight = daemon.calls_in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match call {
            Some(call) => {
                let mut let_go = Vec::new();
                if let Some(calls) = in_flight.get_mut(address) {
                    let_go.extend(calls.remove(&call));
                    if calls.is_empty() {
                        in_flight.remove(address);
                    }
                }
                let_go
            }
            None => {
                daemon.held_inputs.lock().unwrap_or_else(|e| e.into_inner()).remove(address);
                let mut let_go: Vec<Admitted> = in_flight.remove(address).unwrap_or_default().into_values().collect();
                let_go.sort_by_key(|a| a.ask.call);
                let_go
            }
        }
    };
    daemon.calls_settled.notify_waiters();
    let_go
}

/// What the budgets over `address` have left, after what is spent and
/// what the calls in `in_flight` may spend; without `pausing`, leaving out
/// the budgets that pause rather than stop.
fn headroom(
    daemon: &Daemon,
    address: &Address,
    in_flight: &HashMap<Address, HashMap<u64, Admitted>>,
    pausing: bool,
) -> crate::proxy::Headroom {
    use crate::proxy::Headroom;
    // What the calls in flight under `scope` may still spend: (tokens of
    // every kind, output tokens).
    let held_within = |scope: &Address| -> (u64, u64) {
        in_flight
            .iter()
            .filter(|(a, _)| a.is_within(scope))
            .flat_map(|(_, calls)| calls.values())
            .fold((0u64, 0u64), |(tokens, output), call| {
                (tokens.saturating_add(call.tokens()), output.saturating_add(call.output_cap))
            })
    };
    let config = daemon.config();
    let today = crate::model::lifecycle::day_of(chrono::Utc::now());
    daemon.store.read(|table| {
        let mut room = Headroom::default();
        if let Some(kind) = table.agents.get(address).and_then(|r| r.stopped_for) {
            room.spent = Some(format!("the {} budget", kind.as_str()));
        }
        for at in address.agents_up() {
            let counts = |r: &&AgentRecord| pausing || r.budget.on_exceeded != Some(OnExceeded::Pause);
            if let Some(record) = table.agents.get(&at).filter(|r| !r.budget.is_empty()).filter(counts) {
                let left = record.budget.left_after(&subtree_spend(table, &at));
                let spent_cost = left.cost.is_some_and(|c| c <= 0.0);
                let (held_tokens, held_output) = held_within(&at);
                let scope_room = Headroom {
                    tokens: left.tokens.map(|t| t.saturating_sub(held_tokens)),
                    output_tokens: left.output_tokens.map(|t| t.saturating_sub(held_output)),
                    spent: spent_cost.then(|| format!("the cost budget of {at}")),
                };
                room = room.tighten(scope_room);
            }
        }
        let day = table.daily.get(&today).cloned().unwrap_or_default();
        let (held_all, _) = held_within(&Address::root());
        let day_room = Headroom {
            tokens: config.budget.daily_tokens.map(|limit| limit.saturating_sub(day.tokens).saturating_sub(held_all)),
            output_tokens: None,
            spent: config
                .budget
                .daily_cost
                .filter(|limit| day.cost >= *limit)
                .map(|_| format!("the repository's daily cost budget for {today}")),
        };
        room.tighten(day_room)
    })
}

/// Prices a model call from corral.toml's `[prices]` when the model is in it.
pub(super) fn price_call(daemon: &Daemon, model: Option<&str>, usage: &corral_harness::TokenUsage) -> Option<f64> {
    let config = daemon.config();
    model.and_then(|m| config.price(m)).map(|price| price.cost(usage))
}
