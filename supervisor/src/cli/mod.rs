//! The command line and the other front doors: the clap definitions as
//! typed (`args`), what each command does (`commands`), the daemon client
//! (`client`), the MCP server (`mcp`), `corral run` and `corral runs`
//! (`run`), `corral top` (`top`), `corral doctor` (`doctor`), the words
//! shown to a person rather than a script (`human`), the demo and the
//! scripted fake agent.
//!
//! Owns: what a person or script sees (output formats, exit codes). Never
//! does: change state itself: every change is a request to the daemon.

#[macro_use]
mod out;
pub mod args;
mod attach;
pub mod client;
pub mod commands;
pub mod demo;
pub mod doctor;
pub mod fake_agent;
pub mod human;
pub mod mcp;
pub mod run;
mod table;
pub mod top;

pub use args::Cli;
