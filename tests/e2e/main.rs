//! corral's end-to-end tests: one test binary (one link), a module per
//! area. Each test makes its own scratch repository and runs the built
//! `corral` binary against it (see `corral_e2e`, tests/support).

mod attach_size;
mod budget_runaway;
mod budgets;
mod config;
mod faults;
mod foundation;
mod harness;
mod history;
mod mcp;
mod memory;
mod merge_queue;
mod notify;
mod orchestrators;
mod other_clis;
mod pause;
mod person;
mod pool;
mod probes;
mod proxy;
mod proxy_config;
mod regress_daemon;
mod regressions;
mod run;
mod sandbox;
mod top;
mod tree;
