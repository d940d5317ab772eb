//! The metering proxy: what sits between an agent and its model provider,
//! so that corral sees every model call, refuses the one over budget, and
//! the agent never holds the real API key.
//!
//! One proxy per agent, in the agent's monitor (which outlives the
//! daemon), on 127.0.0.1 at a port of its own. The agent gets a per-agent
//! token and a base URL pointing at it; the proxy takes only that token,
//! asks for an admission before each call, bounds the call's output to
//! what the budgets have left, sends it upstream with the real key, and
//! counts it from the wire as the answer streams back.
//!
//! | room | what it holds |
//! |---|---|
//! | [`provider`] | the APIs: routing by path, upstream defaults, refusal bodies |
//! | [`request`] | a call's input estimate and the output-cap rewrite |
//! | [`admit`] | the admission decision, pure |
//! | [`plan`] | how an agent is put behind its proxy: upstreams, keys, token, base URLs |
//! | [`meter`] | counting a call from its response's bytes |
//! | [`server`] | the HTTP server, the upstream client, the [`Gate`] seam |
//!
//! Never does: journal, read budgets, or hold state past the agent (its
//! records go through the gate to the monitor's file and the daemon).

pub mod admit;
pub mod meter;
pub mod plan;
pub mod provider;
pub mod request;
pub mod server;

pub use admit::{decide, Ask, Decision, Headroom};
pub use provider::{Family, Provider};
pub use server::{start, CallRecord, Credential, Gate, Proxy, ProxyConfig, Token, Upstream};
