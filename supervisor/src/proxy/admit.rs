//! The admission of one model call: given what the budgets over an agent
//! have left, is the call sent, and with what output cap?
//!
//! A call is refused when a budget is spent, or when its estimated input
//! would not fit in the tokens left; otherwise it is sent with its output
//! capped to what is left after that input. So a call can overshoot a
//! token budget by at most how far its real input exceeds the estimate.
//!
//! Owns: that decision, as a pure function. Never does: I/O; reading
//! budgets or spend (the daemon passes them).

use serde::{Deserialize, Serialize};

use super::provider::Provider;

/// What the proxy asks before it sends a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    /// Numbers the agent's calls (per proxy, from 1); the call's record
    /// carries it too, so an admission can be matched with its spend.
    pub call: u64,
    pub provider: Provider,
    pub model: Option<String>,
    /// Input tokens the call is expected to read.
    pub estimate_input: u64,
    /// Input tokens it is charged at least once sent, if its answer never
    /// says ([`super::request::input_floor`]).
    #[serde(default)]
    pub input_floor: u64,
    /// The output cap the request asks for, if any.
    pub asked_output: Option<u64>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Decision {
    /// Send it; with `max_output`, lower the request's output cap to it.
    Allow {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_output: Option<u64>,
    },
    /// Answer the agent with the provider's refusal, carrying `message`.
    Refuse { message: String },
    /// Not yet: a `pause` budget is spent and the agent is frozen. The
    /// call is held open (its client waits, frozen too) until another
    /// answer for it comes; it is never sent on this one.
    Hold { message: String },
}

/// What the tightest budget over an agent has left, in each kind the
/// proxy can bound a call by.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headroom {
    /// Tokens of every kind left, if a token budget applies.
    pub tokens: Option<u64>,
    /// Output tokens left, if an output budget applies.
    pub output_tokens: Option<u64>,
    /// Set when a budget that cannot bound a call by tokens (cost, the
    /// day's) is already spent: says which.
    pub spent: Option<String>,
}

impl Headroom {
    /// The tighter of two scopes' headroom, field by field.
    pub fn tighten(self, other: Headroom) -> Headroom {
        fn min(a: Option<u64>, b: Option<u64>) -> Option<u64> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Headroom {
            tokens: min(self.tokens, other.tokens),
            output_tokens: min(self.output_tokens, other.output_tokens),
            spent: self.spent.or(other.spent),
        }
    }
}

/// Decides `ask` against `headroom`.
pub fn decide(headroom: &Headroom, ask: &Ask) -> Decision {
    if let Some(which) = &headroom.spent {
        return Decision::Refuse { message: format!("corral: {which} is spent; this call was not sent") };
    }
    let mut cap: Option<u64> = None;
    if let Some(left) = headroom.tokens {
        if left <= ask.estimate_input {
            return Decision::Refuse {
                message: format!(
                    "corral: the token budget has {left} tokens left, and this call would read about {} \
                     input tokens; it was not sent",
                    ask.estimate_input
                ),
            };
        }
        cap = Some(left - ask.estimate_input);
    }
    if let Some(left) = headroom.output_tokens {
        if left == 0 {
            return Decision::Refuse {
                message: "corral: the output-token budget is spent; this call was not sent".into(),
            };
        }
        cap = Some(cap.map_or(left, |c| c.min(left)));
    }
    Decision::Allow { max_output: cap }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(estimate_input: u64) -> Ask {
        Ask {
            call: 1,
            provider: Provider::Anthropic,
            model: None,
            estimate_input,
            input_floor: estimate_input,
            asked_output: Some(32_000),
        }
    }

    #[test]
    fn no_budget_sends_the_call_as_asked() {
        assert_eq!(decide(&Headroom::default(), &ask(10_000)), Decision::Allow { max_output: None });
    }

    #[test]
    fn the_crossing_call_is_capped_to_what_is_left_after_its_input() {
        let room = Headroom { tokens: Some(1_500), ..Headroom::default() };
        assert_eq!(decide(&room, &ask(1_000)), Decision::Allow { max_output: Some(500) });
    }

    #[test]
    fn a_call_whose_input_would_not_fit_is_refused() {
        let room = Headroom { tokens: Some(1_000), ..Headroom::default() };
        assert!(matches!(decide(&room, &ask(1_000)), Decision::Refuse { .. }));
        let room = Headroom { tokens: Some(0), ..Headroom::default() };
        assert!(matches!(decide(&room, &ask(0)), Decision::Refuse { .. }));
    }

    #[test]
    fn output_and_spent_budgets_bound_too() {
        let room = Headroom { tokens: Some(5_000), output_tokens: Some(300), spent: None };
        assert_eq!(decide(&room, &ask(1_000)), Decision::Allow { max_output: Some(300) });
        let room = Headroom { output_tokens: Some(0), ..Headroom::default() };
        assert!(matches!(decide(&room, &ask(0)), Decision::Refuse { .. }));
        let room = Headroom { spent: Some("the cost budget".into()), ..Headroom::default() };
        let Decision::Refuse { message } = decide(&room, &ask(0)) else { panic!("sent") };
        assert!(message.contains("cost budget"), "{message}");
    }

    #[test]
    fn the_tighter_scope_wins() {
        let agent = Headroom { tokens: Some(9_000), output_tokens: None, spent: None };
        let subtree = Headroom { tokens: Some(2_000), output_tokens: Some(700), spent: None };
        assert_eq!(agent.tighten(subtree), Headroom { tokens: Some(2_000), output_tokens: Some(700), spent: None });
    }
}
