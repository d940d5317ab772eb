//! Budgets: limits on what an agent may spend, and the one place that
//! decides when a limit is near or crossed.
//!
//! Kinds: total tokens (input + output + cache read + cache write, as the
//! provider bills them), output tokens alone, cost in USD, wall time since
//! the agent started, and idle time (no output for a while). A budget
//! belongs to an agent and covers its whole subtree: the spend of a scope
//! is the sum over the agent and every agent below it. Wall and idle time
//! are the agent's own.
//!
//! Nothing here touches processes, files or clocks: callers pass the spend
//! and act on the verdicts.
//!
//! [`Budget`] is the one type of an agent's limits: corral.toml's
//! `budget = { ... }`, the `--max-tokens`/`--timeout`/... flags, MCP's
//! `spawn_agent` and the journal all hold it. Its own serde is the record
//! form the journal and `AgentRecord` keep (`"wall_secs": 30.0`, numbers of
//! seconds), read as written: a budget granted from what a parent had left
//! may be 0. corral.toml spells it with `wall` and `idle` durations and
//! refuses every limit that is not greater than 0; that spelling and its
//! checks are the config's (`config::de::budget`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default fraction of a budget at which a warning is given.
pub const DEFAULT_WARN_AT: f64 = 0.8;

/// Limits; `None` means no limit of that kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Tokens, all four kinds added (input, output, cache read, cache write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Output tokens alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
    /// USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Time since the agent started.
    #[serde(default, rename = "wall_secs", with = "crate::model::duration::opt_secs")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wall: Option<Duration>,
    /// Time without output or progress.
    #[serde(default, rename = "idle_secs", with = "crate::model::duration::opt_secs")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
    /// Warn at this fraction of a limit (default 0.8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<f64>,
    /// What a spent token, output-token or cost limit does (default
    /// stop). Time limits always stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exceeded: Option<OnExceeded>,
}

/// An amount of a budget that is not a number greater than 0 (`corral
/// budget --add-tokens -5`): exits 13 like any other bad budget.
#[derive(Debug, Clone, PartialEq)]
pub struct AmountError(pub String);

impl std::fmt::Display for AmountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AmountError {}

/// What happens to a budget's subtree once the budget is spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OnExceeded {
    /// Stop every agent of the subtree (`budget_exceeded`).
    #[default]
    Stop,
    /// Freeze every agent of the subtree, no call upstream and no process
    /// running, until `corral budget` raises the limit (`paused`).
    Pause,
}

impl OnExceeded {
    pub fn as_str(self) -> &'static str {
        match self {
            OnExceeded::Stop => "stop",
            OnExceeded::Pause => "pause",
        }
    }
}

/// Which limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    Tokens,
    OutputTokens,
    Cost,
    Wall,
    Idle,
    DailyTokens,
    DailyCost,
}

impl BudgetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetKind::Tokens => "tokens",
            BudgetKind::OutputTokens => "output_tokens",
            BudgetKind::Cost => "cost",
            BudgetKind::Wall => "wall",
            BudgetKind::Idle => "idle",
            BudgetKind::DailyTokens => "daily_tokens",
            BudgetKind::DailyCost => "daily_cost",
        }
    }

    /// How the figures read to a person.
    pub fn describe(self, used: f64, limit: f64) -> String {
        match self {
            BudgetKind::Cost | BudgetKind::DailyCost => format!("{} ${used:.4} of ${limit:.4}", self.as_str()),
            BudgetKind::Wall | BudgetKind::Idle => format!("{} {used:.1}s of {limit:.1}s", self.as_str()),
            _ => format!("{} {used:.0} of {limit:.0}", self.as_str()),
        }
    }
}

/// What a scope has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    pub tokens: u64,
    pub output_tokens: u64,
    pub cost: f64,
    pub wall_secs: f64,
    pub idle_secs: f64,
}

/// `a + b` for money, kept finite: a sum past the largest `f64` stays at
/// it (a budget sees it spent), never infinity, which JSON cannot carry
/// (the journal would hold a line no reader could parse).
pub fn cost_sum(a: f64, b: f64) -> f64 {
    let sum = a + b;
    if sum.is_finite() {
        sum
    } else {
        f64::MAX
    }
}

/// A limit near or past.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Crossing {
    pub kind: BudgetKind,
    pub used: f64,
    pub limit: f64,
    /// Past the limit (else only past the warning threshold).
    pub exceeded: bool,
}

impl Budget {
    /// True when no limit is set (`warn_at` alone limits nothing).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_none()
            && self.output_tokens.is_none()
            && self.cost.is_none()
            && self.wall.is_none()
            && self.idle.is_none()
    }

    /// Lays `other` on top of `self`: each limit `other` sets wins (a
    /// corral.toml layer, or the flags on the settings of a role).
    pub fn overlay(&mut self, other: &Budget) {
        self.tokens = other.tokens.or(self.tokens);
        self.output_tokens = other.output_tokens.or(self.output_tokens);
        self.cost = other.cost.or(self.cost);
        self.wall = other.wall.or(self.wall);
        self.idle = other.idle.or(self.idle);
        self.warn_at = other.warn_at.or(self.warn_at);
        self.on_exceeded = other.on_exceeded.or(self.on_exceeded);
    }

    /// Whether a spent limit of `kind` pauses the subtree rather than
    /// stopping it: only limits a raise can lift (tokens, output tokens,
    /// cost), and only when the budget says `pause`.
    pub fn pauses(&self, kind: BudgetKind) -> bool {
        self.on_exceeded == Some(OnExceeded::Pause)
            && matches!(kind, BudgetKind::Tokens | BudgetKind::OutputTokens | BudgetKind::Cost)
    }

    /// Every limit `spend` is near (at the warning threshold) or past. A
    /// limit is past when the spend is strictly over it for time, and at or
    /// over it for tokens and cost (the agent may not spend more).
    pub fn check(&self, spend: &Spend) -> Vec<Crossing> {
        let warn_at = self.warn_at.unwrap_or(DEFAULT_WARN_AT);
        let limits = [
            (BudgetKind::Tokens, self.tokens.map(|t| t as f64), spend.tokens as f64),
            (BudgetKind::OutputTokens, self.output_tokens.map(|t| t as f64), spend.output_tokens as f64),
            (BudgetKind::Cost, self.cost, spend.cost),
            (BudgetKind::Wall, self.wall.map(|d| d.as_secs_f64()), spend.wall_secs),
            (BudgetKind::Idle, self.idle.map(|d| d.as_secs_f64()), spend.idle_secs),
        ];
        limits
            .into_iter()
            .filter_map(|(kind, limit, used)| {
                let limit = limit?;
                let exceeded = match kind {
                    BudgetKind::Wall | BudgetKind::Idle => used > limit,
                    _ => used >= limit,
                };
                (exceeded || used >= limit * warn_at).then_some(Crossing { kind, used, limit, exceeded })
            })
            .collect()
    }

    /// What is left of this budget after `spend`, as a budget a child may
    /// have at most (tokens, output tokens and cost; time limits are each
    /// agent's own).
    pub fn left_after(&self, spend: &Spend) -> Budget {
        Budget {
            tokens: self.tokens.map(|t| t.saturating_sub(spend.tokens)),
            output_tokens: self.output_tokens.map(|t| t.saturating_sub(spend.output_tokens)),
            cost: self.cost.map(|c| (c - spend.cost).max(0.0)),
            wall: None,
            idle: None,
            warn_at: None,
            on_exceeded: None,
        }
    }

    /// Checks that a child asking for `wanted` stays within `left` (what
    /// the parent has left); returns the child's budget, capped to `left`
    /// where it asked for nothing, or why it is refused.
    pub fn grant(wanted: &Budget, left: &Budget) -> Result<Budget, String> {
        let mut granted = *wanted;
        if let Some(left_tokens) = left.tokens {
            match wanted.tokens {
                Some(t) if t > left_tokens => {
                    return Err(format!("asks for {t} tokens but its parent has {left_tokens} left"));
                }
                Some(_) => {}
                None => granted.tokens = Some(left_tokens),
            }
        }
        if let Some(left_output) = left.output_tokens {
            match wanted.output_tokens {
                Some(t) if t > left_output => {
                    return Err(format!("asks for {t} output tokens but its parent has {left_output} left"));
                }
                Some(_) => {}
                None => granted.output_tokens = Some(left_output),
            }
        }
        if let Some(left_cost) = left.cost {
            match wanted.cost {
                Some(c) if c > left_cost + 1e-9 => {
                    return Err(format!("asks for ${c:.4} but its parent has ${left_cost:.4} left"));
                }
                Some(_) => {}
                None => granted.cost = Some(left_cost),
            }
        }
        Ok(granted)
    }

    /// Refuses negative, zero or non-finite limits, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            ("tokens", self.tokens.map(|t| t as f64)),
            ("output tokens", self.output_tokens.map(|t| t as f64)),
            ("cost", self.cost),
            ("wall time", self.wall.map(|d| d.as_secs_f64())),
            ("idle time", self.idle.map(|d| d.as_secs_f64())),
        ];
        for (name, value) in checks {
            if let Some(v) = value {
                if !v.is_finite() || v <= 0.0 {
                    return Err(format!("the {name} budget must be a positive number, not {v}"));
                }
            }
        }
        if let Some(w) = self.warn_at {
            if !(w > 0.0 && w <= 1.0) {
                return Err(format!("warn_at must be above 0 and at most 1, not {w}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pausing_budget_pauses_and_only_for_limits_a_raise_can_lift() {
        let stop = Budget { tokens: Some(10), ..Budget::default() };
        assert!(!stop.pauses(BudgetKind::Tokens));
        let pause = Budget { on_exceeded: Some(OnExceeded::Pause), ..stop };
        for kind in [BudgetKind::Tokens, BudgetKind::OutputTokens, BudgetKind::Cost] {
            assert!(pause.pauses(kind), "{kind:?}");
        }
        for kind in [BudgetKind::Wall, BudgetKind::Idle, BudgetKind::DailyTokens, BudgetKind::DailyCost] {
            assert!(!pause.pauses(kind), "{kind:?}");
        }
        let mut layered = pause;
        layered.overlay(&Budget { on_exceeded: Some(OnExceeded::Stop), ..Budget::default() });
        assert_eq!(layered.on_exceeded, Some(OnExceeded::Stop));
        layered.overlay(&Budget::default());
        assert_eq!(layered.on_exceeded, Some(OnExceeded::Stop), "unset keeps what is below");
    }

    #[test]
    fn warns_then_exceeds() {
        let budget = Budget { tokens: Some(1000), ..Budget::default() };
        assert!(budget.check(&Spend { tokens: 799, ..Spend::default() }).is_empty());
        let near = budget.check(&Spend { tokens: 800, ..Spend::default() });
        assert_eq!(near.len(), 1);
        assert!(!near[0].exceeded);
        let past = budget.check(&Spend { tokens: 1000, ..Spend::default() });
        assert!(past[0].exceeded);
    }

    #[test]
    fn time_is_past_only_when_over() {
        let budget =
            Budget { wall: Some(Duration::from_secs(5)), idle: Some(Duration::from_secs(2)), ..Budget::default() };
        let at = budget.check(&Spend { wall_secs: 5.0, idle_secs: 2.0, ..Spend::default() });
        assert!(at.iter().all(|c| !c.exceeded));
        let over = budget.check(&Spend { wall_secs: 5.1, idle_secs: 1.0, ..Spend::default() });
        assert!(over.iter().any(|c| c.kind == BudgetKind::Wall && c.exceeded));
        assert!(!over.iter().any(|c| c.kind == BudgetKind::Idle));
    }

    #[test]
    fn a_child_never_gets_more_than_its_parent_has_left() {
        let parent = Budget { tokens: Some(1000), cost: Some(1.0), ..Budget::default() };
        let left = parent.left_after(&Spend { tokens: 600, cost: 0.25, ..Spend::default() });
        assert_eq!(left.tokens, Some(400));
        let err = Budget::grant(&Budget { tokens: Some(500), ..Budget::default() }, &left).unwrap_err();
        assert!(err.contains("asks for 500 tokens but its parent has 400 left"), "{err}");
        let granted = Budget::grant(&Budget::default(), &left).unwrap();
        assert_eq!((granted.tokens, granted.cost), (Some(400), Some(0.75)));
        assert!(Budget::grant(&Budget { cost: Some(0.8), ..Budget::default() }, &left).is_err());
    }

    #[test]
    fn refuses_nonsense() {
        assert!(Budget { cost: Some(-1.0), ..Budget::default() }.validate().unwrap_err().contains("cost"));
        assert!(Budget { tokens: Some(0), ..Budget::default() }.validate().is_err());
        assert!(Budget { warn_at: Some(1.5), ..Budget::default() }.validate().is_err());
        Budget { tokens: Some(5), wall: Some(Duration::from_millis(500)), ..Budget::default() }.validate().unwrap();
    }

    #[test]
    fn the_journal_form_has_seconds_and_reads_what_was_granted() {
        let text = r#"{"tokens":5000,"wall_secs":30.0}"#;
        let budget: Budget = serde_json::from_str(text).unwrap();
        assert_eq!(budget, Budget { tokens: Some(5000), wall: Some(Duration::from_secs(30)), ..Budget::default() });
        assert_eq!(serde_json::to_string(&budget).unwrap(), text);
        let all = r#"{"tokens":1,"output_tokens":2,"cost":0.5,"wall_secs":1.5,"idle_secs":0.25,"warn_at":0.9}"#;
        assert_eq!(serde_json::to_string(&serde_json::from_str::<Budget>(all).unwrap()).unwrap(), all);
        // What a parent had left may be nothing.
        let spent: Budget = serde_json::from_str(r#"{"tokens":0,"cost":0.0}"#).unwrap();
        assert_eq!((spent.tokens, spent.cost), (Some(0), Some(0.0)));
    }

    #[test]
    fn a_layer_sets_only_what_it_names() {
        let mut budget = Budget { tokens: Some(10), cost: Some(1.0), ..Budget::default() };
        budget.overlay(&Budget { tokens: Some(5), idle: Some(Duration::from_secs(60)), ..Budget::default() });
        let expected =
            Budget { tokens: Some(5), cost: Some(1.0), idle: Some(Duration::from_secs(60)), ..Budget::default() };
        assert_eq!(budget, expected);
    }
}

/// Where an agent's usage is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Meter {
    /// From the CLI's own output (its usage lines), after each call.
    #[default]
    Stream,
    /// On the wire, by corral's proxy in the agent's monitor: every call is
    /// admitted before it is sent, bounded, and counted from the response.
    Proxy,
}

impl Meter {
    pub fn as_str(self) -> &'static str {
        match self {
            Meter::Stream => "stream",
            Meter::Proxy => "proxy",
        }
    }
}
