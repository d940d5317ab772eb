//! The model: what corral's words mean as plain types. Addresses, the
//! event schema, agent states and the fold of events into the agent table,
//! budgets, restart rules, durations and errors.
//!
//! Owns: the meaning of every event (the lifecycle fold is the one place
//! that turns events into state). Never does: I/O, processes, clocks
//! (times come in as arguments or event timestamps), git.

pub mod address;
pub mod budget;
pub mod duration;
pub mod error;
pub mod event;
pub mod lifecycle;
pub mod notify;
pub mod restart;
