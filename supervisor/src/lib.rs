//! corral: a supervisor for coding agents on one machine.
//!
//! Where things are:
//! - `lifecycle`: agent states and what each event does to them;
//! - `event`: the event schema; `journal`: the append-only, fsynced journal;
//! - `protocol`: the client-daemon wire protocol;
//! - `daemon`: the per-repository daemon; `client`: talking to it;
//! - `monitor`: the per-agent process that owns the PTY and outlives the daemon;
//! - `process`: signals and `/proc`; `worktree`: git (the only user of git2);
//! - `commands`: what each CLI command does; `cli`: the command line itself;
//! - `mcp`: the same tool surface over MCP on stdio (`corral mcp`);
//! - `merge`: merging an agent's branch back; `config`: corral.toml;
//! - `budget` and `restart`: the rules for budgets and restart policies.

pub mod address;
pub mod budget;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod duration;
pub mod error;
pub mod event;
pub mod fake_agent;
pub mod journal;
pub mod lifecycle;
pub mod mcp;
pub mod merge;
pub mod monitor;
pub mod output;
pub mod paths;
pub mod process;
pub mod protocol;
pub mod restart;
pub mod worktree;
