//! corral: a supervisor for coding agents on one machine.
//!
//! The folders are the architecture (each `mod.rs` says what it owns and
//! what it never does):
//! - `model`: addresses, events, agent states and the lifecycle fold,
//!   budgets, restart rules, durations, errors. Plain types, no I/O.
//! - `wire`: the client-daemon protocol, as types and frames.
//! - `config`: corral.toml, read and resolved for one agent.
//! - `cli`: the command line (`args`), what each command does
//!   (`commands`), the daemon client, MCP, the demo, the scripted agent.
//! - `daemon`: the per-repository daemon; the journal's only writer.
//! - `monitor`: the per-agent process that owns the PTY and outlives the
//!   daemon.
//! - `proxy`: the metering proxy between an agent and its model provider.
//! - `git`: worktrees and merge back; the only users of git2.
//! - `sys`: processes and signals, the state folder's paths, output logs.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod git;
pub mod model;
pub mod monitor;
pub mod proxy;
pub mod sys;
pub mod wire;
